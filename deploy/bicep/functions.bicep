// kv-rotator on Azure Functions (Flex Consumption, custom handler): the second entry point.
//
//   az deployment group create -g RG -f deploy/bicep/functions.bicep
//   (deploy the package of deploy/functions, docs/deploy.md section 8, then)
//   az deployment group create -g RG -f deploy/bicep/functions.bicep -p deployEventSubscription=true
//
// What it creates (docs/deploy.md, section 8, walks through each, with every permission):
//   - Log Analytics workspace (vault audit log) and Application Insights on it (invocations);
//   - the worker's user-assigned managed identity, the app's only identity;
//   - a Key Vault with RBAC authorization; the identity gets Key Vault Secrets Officer on
//     this vault only;
//   - the Functions host's storage account, no shared keys: the identity gets Storage Blob
//     Data Owner on it (deployment package, timer lock, function keys) and Application
//     Insights' Monitoring Metrics Publisher (Entra-only telemetry);
//   - a Flex Consumption plan and function app: Linux, runtime custom (the kv-rotator
//     binary of the package runs as the custom handler), the vault and identity as app
//     settings, the maximum instance count at the lowest value (see maximumInstanceCount);
//   - with privateNetworking (the default): a virtual network, the vault's and the host
//     storage's private endpoints and zones, public network access of both disabled, and
//     the app's outbound traffic through the network (virtual network integration);
//   - dead-letter storage, the vault's Event Grid system topic and, with
//     deployEventSubscription, a subscription for SecretNearExpiry and SecretExpired to the
//     eventgrid function (endpoint type AzureFunction: Event Grid fetches the Event Grid
//     extension's system key itself, the template holds no key).
//
// The same modules as main.bicep (vault, identity, network, private endpoints, dead
// letters, Event Grid); the host storage, Application Insights and the function app are
// Functions' own. Deploy it to a resource group of its own: it names its resources as
// main.bicep does, and a vault has one engine, in one variant or the other.

targetScope = 'resourceGroup'

// ---- General ----

@description('Azure region of every resource (one where Flex Consumption offers the custom runtime: az functionapp list-flexconsumption-runtimes --location REGION); defaults to the resource group\'s.')
param location string = resourceGroup().location

@description('Prefix of every resource name: 3-10 lowercase letters and digits (it also starts the storage accounts\' names, which allow nothing else).')
@minLength(3)
@maxLength(10)
param namePrefix string = 'kvr'

@description('Tags set on every resource.')
param tags object = {}

// ---- Key Vault ----

@description('Name of the Key Vault: 3-24 letters, digits and dashes, globally unique.')
@minLength(3)
@maxLength(24)
param vaultName string = '${namePrefix}-${uniqueString(resourceGroup().id)}'

@description('Days a deleted secret (a finished rotation\'s journal record included) stays recoverable: 7-90.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

// ---- The function app ----

@description('Name of the function app: 2-60 letters, digits and dashes, globally unique (it names APP.azurewebsites.net).')
@minLength(2)
@maxLength(60)
param appName string = '${namePrefix}-func-${uniqueString(resourceGroup().id)}'

@description('Memory of each instance in MB (512, 2048 or 4096). kv-rotator needs little: 512.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 512

// One engine per vault: the engine lease (a Key Vault secret) refuses a second instance
// whatever this says, so the value avoids refused invocations (503, retried), not danger.
// It limits each scale group (eventgrid, sweep, the HTTP group with rotate) separately, so
// up to three instances can still run at once, and the lease arbitrates between them.
@description('Maximum number of on-demand instances per scale group (1-1000). Kept at the lowest value Flex Consumption accepts: 1 on Microsoft\'s current "Event-driven scaling" page (it was 40 during the preview); raise it only if your region refuses 1. Correctness never depends on it: the engine lease allows one engine per vault.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 1

@description('Further app settings, e.g. { "KV_ROTATOR_ENGINE__MAX_ATTEMPTS": "5" }: KV_ROTATOR_<SECTION>__<KEY> settings override deploy/functions/config.toml. They are plain app settings: no password here (an admin credential is a Key Vault secret name in config.toml). The vault and identity settings are the template\'s and win over these.')
param extraAppSettings object = {}

@description('Replication of the Functions host\'s storage account (its content is recreated by redeploying the package).')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param hostStorageSkuName string = 'Standard_LRS'

// ---- Event Grid ----

@description('false (the default): the system topic but no subscription yet. Event Grid refuses a subscription to a function that does not exist, and a new app has none until the package is deployed (docs/deploy.md, section 8). Deploy again with true after that.')
param deployEventSubscription bool = false

@description('Events per delivery (1-5000). 1: each event is one delivery and one invocation, so an event refused while another instance holds the engine lease (503) is redelivered alone.')
@minValue(1)
@maxValue(5000)
param maxEventsPerBatch int = 1

@description('Delivery attempts per event before it is dead-lettered (1-30).')
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30

@description('Minutes an event is retried before it is dead-lettered (1-1440). The timer-triggered sweep finds due secrets anyway.')
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

@description('Blob container receiving dead-lettered events.')
param deadLetterContainerName string = 'eventgrid-deadletter'

@description('Replication of the dead-letter storage account.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param deadLetterSkuName string = 'Standard_GRS'

@description('Days a deleted dead-letter blob stays recoverable.')
@minValue(1)
@maxValue(365)
param deadLetterDeleteRetentionDays int = 7

// ---- Private connectivity ----

@description('true: the vault\'s and the host storage\'s public network access are disabled; both are reached through private endpoints in a virtual network, which the function app\'s outbound traffic goes through (virtual network integration). Event Grid and callers of rotate still reach the app\'s public endpoint, with keys. false: no virtual network; vault and host storage are public, every request Entra-authorized.')
param privateNetworking bool = true

@description('With privateNetworking: address space of the virtual network.')
param vnetAddressPrefix string = '10.40.0.0/16'

@description('With privateNetworking: the function app\'s integration subnet, delegated to Microsoft.App/environments (one address per instance).')
param appsSubnetPrefix string = '10.40.0.0/27'

@description('With privateNetworking: subnet of the private endpoints (/28 or larger).')
param privateEndpointsSubnetPrefix string = '10.40.0.32/28'

@description('With privateNetworking: the Key Vault private DNS zone of this cloud.')
param vaultDnsZoneName string = 'privatelink.vaultcore.azure.net'

// ---- Logs ----

@description('Days Log Analytics keeps the logs (30-730).')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

// The Event Grid-triggered function of the package: deploy/functions/eventgrid/function.json.
var eventGridFunctionName = 'eventgrid'
var hostStorageName = take('${namePrefix}fn${uniqueString(resourceGroup().id)}', 24)
var blobDnsZoneName = 'privatelink.blob.${environment().suffixes.storage}'

module logs 'modules/monitoring.bicep' = {
  name: 'kvr-logs'
  params: {
    name: '${namePrefix}-logs'
    location: location
    tags: tags
    retentionInDays: logRetentionInDays
  }
}

module identity 'modules/identity.bicep' = {
  name: 'kvr-identity'
  params: {
    name: '${namePrefix}-worker'
    location: location
    tags: tags
  }
}

module network 'modules/network.bicep' = if (privateNetworking) {
  name: 'kvr-network'
  params: {
    name: '${namePrefix}-vnet'
    location: location
    tags: tags
    addressPrefix: vnetAddressPrefix
    appsSubnetPrefix: appsSubnetPrefix
    privateEndpointsSubnetPrefix: privateEndpointsSubnetPrefix
    vaultDnsZoneName: vaultDnsZoneName
    extraDnsZoneNames: [
      blobDnsZoneName
    ]
  }
}

module vault 'modules/keyvault.bicep' = {
  name: 'kvr-vault'
  params: {
    name: vaultName
    location: location
    tags: tags
    tenantId: tenant().tenantId
    softDeleteRetentionInDays: softDeleteRetentionInDays
    privateOnly: privateNetworking
    // No firewall ranges: Flex Consumption instances have no fixed egress address to allow
    // outside a network, so the vault is either private or open (every request by RBAC).
    allowedIpRanges: []
    workerPrincipalId: identity.outputs.principalId
    workerIdentityId: identity.outputs.id
    logAnalyticsWorkspaceId: logs.outputs.id
  }
}

module vaultEndpoint 'modules/private-endpoint.bicep' = if (privateNetworking) {
  name: 'kvr-vault-endpoint'
  params: {
    name: '${vaultName}-pe'
    location: location
    tags: tags
    targetId: vault.outputs.id
    groupId: 'vault'
    subnetId: privateNetworking ? network.outputs.privateEndpointsSubnetId : ''
    dnsZoneId: privateNetworking ? network.outputs.vaultDnsZoneId : ''
  }
}

module hostStorage 'modules/function-storage.bicep' = {
  name: 'kvr-func-storage'
  params: {
    name: hostStorageName
    location: location
    tags: tags
    skuName: hostStorageSkuName
    deploymentContainerName: 'app-package'
    privateOnly: privateNetworking
    identityPrincipalId: identity.outputs.principalId
    identityId: identity.outputs.id
  }
}

module hostStorageEndpoint 'modules/private-endpoint.bicep' = if (privateNetworking) {
  name: 'kvr-func-storage-endpoint'
  params: {
    name: '${hostStorageName}-blob-pe'
    location: location
    tags: tags
    targetId: hostStorage.outputs.id
    groupId: 'blob'
    subnetId: privateNetworking ? network.outputs.privateEndpointsSubnetId : ''
    dnsZoneId: privateNetworking ? network.outputs.extraDnsZoneIds[0] : ''
  }
}

module appInsights 'modules/appinsights.bicep' = {
  name: 'kvr-func-insights'
  params: {
    name: '${namePrefix}-func-insights'
    location: location
    tags: tags
    logAnalyticsWorkspaceId: logs.outputs.id
    publisherPrincipalId: identity.outputs.principalId
    publisherIdentityId: identity.outputs.id
  }
}

// The Functions host's settings: its storage by identity, blob only (the timer's lock and
// status, the function keys and the package need nothing else, so the identity has no
// queue or table role), and Application Insights with an Entra token.
var hostSettings = {
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.outputs.clientId
  AzureWebJobsStorage__blobServiceUri: hostStorage.outputs.blobEndpoint
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.outputs.connectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.outputs.clientId};Authorization=AAD'
}

// kv-rotator's: the vault and the identity, overriding deploy/functions/config.toml (the
// credential's kind is managed-identity there already; repeated so no package drifts).
// The configuration file's path is no setting: host.json starts the handler with --config
// config.toml (the package root is its working directory), which wins over KV_ROTATOR_CONFIG.
var handlerSettings = {
  KV_ROTATOR_VAULT__URL: vault.outputs.uri
  KV_ROTATOR_VAULT__CREDENTIAL__KIND: 'managed-identity'
  KV_ROTATOR_VAULT__CREDENTIAL__CLIENT_ID: identity.outputs.clientId
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'kvr-func-app'
  params: {
    planName: '${namePrefix}-func-plan'
    appName: appName
    location: location
    tags: tags
    identityId: identity.outputs.id
    deploymentContainerUrl: hostStorage.outputs.deploymentContainerUrl
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    subnetId: privateNetworking ? network.outputs.appsSubnetId : ''
    // Later objects win: extraAppSettings cannot replace the template's settings.
    appSettings: union(extraAppSettings, handlerSettings, hostSettings)
  }
  // The host must reach its storage, and the handler the vault, by their private
  // addresses from the first start.
  dependsOn: [
    hostStorageEndpoint
    vaultEndpoint
  ]
}

module deadLetters 'modules/deadletter.bicep' = {
  name: 'kvr-deadletters'
  params: {
    name: take('${namePrefix}dl${uniqueString(resourceGroup().id)}', 24)
    location: location
    tags: tags
    containerName: deadLetterContainerName
    skuName: deadLetterSkuName
    deleteRetentionDays: deadLetterDeleteRetentionDays
  }
}

module events 'modules/eventgrid.bicep' = {
  name: 'kvr-events'
  params: {
    topicName: '${vaultName}-events'
    location: location
    tags: tags
    vaultId: vault.outputs.id
    deploySubscription: deployEventSubscription
    functionId: '${functionApp.outputs.id}/functions/${eventGridFunctionName}'
    webhookUrl: ''
    webhookTenantId: ''
    webhookAppIdOrUri: ''
    maxEventsPerBatch: maxEventsPerBatch
    maxDeliveryAttempts: maxDeliveryAttempts
    eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    deadLetterAccountName: deadLetters.outputs.accountName
    deadLetterContainerName: deadLetters.outputs.containerName
  }
}

@description('Name of the Key Vault holding the managed secrets.')
output vaultName string = vault.outputs.name

@description('URI of the Key Vault.')
output vaultUri string = vault.outputs.uri

@description('Name of the function app (az functionapp ... -n).')
output appName string = functionApp.outputs.name

@description('Host name of the function app: POST https://HOST/api/rotate with a function key.')
output appHostName string = functionApp.outputs.defaultHostName

@description('Resource id of the eventgrid function, the event subscription\'s destination.')
output eventGridFunctionId string = '${functionApp.outputs.id}/functions/${eventGridFunctionName}'

@description('Name of the Functions host\'s storage account.')
output hostStorageName string = hostStorage.outputs.name

@description('Name of the Application Insights component (invocation logs).')
output appInsightsName string = appInsights.outputs.name

@description('Client id of the worker identity.')
output workerClientId string = identity.outputs.clientId

@description('Principal (object) id of the worker identity.')
output workerPrincipalId string = identity.outputs.principalId

@description('Resource id of the vault\'s Event Grid system topic.')
output systemTopicId string = events.outputs.topicId
