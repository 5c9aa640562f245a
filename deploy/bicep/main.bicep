// kv-rotator on Azure Container Apps: from an empty resource group to rotations.
//
//   az deployment group create -g RG -f deploy/bicep/main.bicep -p @deploy/bicep/main.parameters.example.json
//
// What it creates (docs/deploy.md walks through each, with every permission):
//   - Log Analytics workspace (container logs, vault audit log);
//   - the worker's user-assigned managed identity;
//   - a Key Vault with RBAC authorization; the identity gets Key Vault Secrets Officer on
//     this vault only (and AcrPull on the image's registry when containerRegistryName is set);
//   - with privateNetworking (the default): a virtual network, the vault's private
//     endpoint and privatelink.vaultcore.azure.net zone, public network access disabled,
//     and the Container Apps environment in the same network;
//   - the Container Apps environment and app: HTTPS ingress, /healthz probes, one replica;
//   - dead-letter storage, the vault's Event Grid system topic and a subscription for
//     SecretNearExpiry and SecretExpired to the webhook with Microsoft Entra authentication.
//
// Before deploying: the webhook's Entra app registration (docs/deploy.md, step 2), and
// the image pushed to a registry. The Azure Functions variant is the second entry point,
// functions.bicep (docs/deploy.md, section 8).

targetScope = 'resourceGroup'

// ---- General ----

@description('Azure region of every resource; defaults to the resource group\'s.')
param location string = resourceGroup().location

@description('Prefix of every resource name: 3-10 lowercase letters and digits (it also starts the storage account\'s name, which allows nothing else).')
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

@description('Without privateNetworking: CIDR ranges allowed through the vault firewall (the rest are denied). Empty: the vault answers every network, every request still authorized by RBAC. Ignored with privateNetworking (public access is disabled).')
param vaultAllowedIpRanges array = []

// ---- The worker ----

@description('Image of kv-rotator built from deploy/container/Containerfile, e.g. myregistry.azurecr.io/kv-rotator:0.1.0.')
param image string

@description('Name of an Azure Container Registry in this resource group holding the image: the worker identity gets AcrPull on it. Empty: the image is pulled anonymously (a public registry).')
param containerRegistryName string = ''

@description('Configuration appended to the generated file (which sets [vault], [webhook], [webhook.auth] and [admin]): TOML sections such as [targets.NAME], [engine], [sweeper], [alerts], [lease]. It must not repeat the generated sections; override their keys with KV_ROTATOR_<SECTION>__<KEY> variables instead. No password belongs here: an admin credential is a Key Vault secret name.')
param extraConfigToml string = ''

@description('Key Vault secrets of this vault given to the container as environment variables, e.g. [{ "env": "KVR_ALERT_TOKEN", "secret": "alert-token" }]. Container Apps reads them with the worker identity and refreshes them within 30 minutes of a new version.')
param secretEnv array = []

@description('vCPUs of the container, as a decimal string (Container Apps pairs: 0.25/0.5Gi, 0.5/1Gi, 1/2Gi, ...).')
param cpu string = '0.5'

@description('Memory of the container (see cpu).')
param memory string = '1Gi'

@description('CIDR ranges allowed to reach the webhook\'s ingress, e.g. the AzureEventGrid service tag\'s ranges for the region. Empty: every address (every delivery is still authenticated by its Entra token).')
param ingressAllowedCidrs array = []

// ---- Webhook authentication (Microsoft Entra) ----

@description('Microsoft Entra tenant of the webhook\'s app registration; kv-rotator accepts tokens of this tenant only.')
param webhookTenantId string = tenant().tenantId

@description('Application (client) id or App ID URI (api://...) of the webhook\'s app registration, which has the app role AzureEventGridSecureWebhookSubscriber assigned to Event Grid\'s service principal. Event Grid requests its tokens for it.')
param webhookAppIdOrUri string

@description('Audiences kv-rotator accepts (webhook.auth.audience): the app\'s App ID URI and/or application id. Empty: [webhookAppIdOrUri].')
param webhookAudiences array = []

// ---- Event Grid ----

@description('false: create the system topic but no subscription yet (e.g. while the app registration or the image is not ready: the subscription\'s validation handshake needs a running, authenticated webhook). Deploy again with true.')
param deployEventSubscription bool = true

@description('Events per delivery (1-5000).')
@minValue(1)
@maxValue(5000)
param maxEventsPerBatch int = 10

@description('Delivery attempts per event before it is dead-lettered (1-30).')
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30

@description('Minutes an event is retried before it is dead-lettered (1-1440).')
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

@description('true: the vault\'s public network access is disabled; it is reached through a private endpoint in a virtual network that also holds the Container Apps environment. false: no virtual network; the vault is public (see vaultAllowedIpRanges).')
param privateNetworking bool = true

@description('With privateNetworking: address space of the virtual network.')
param vnetAddressPrefix string = '10.40.0.0/16'

@description('With privateNetworking: subnet of the Container Apps environment (/27 or larger).')
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

var audiences = empty(webhookAudiences) ? [
  webhookAppIdOrUri
] : webhookAudiences
// Each audience as a TOML string: "a", "b".
var audienceToml = '"${join(audiences, '", "')}"'

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
    extraDnsZoneNames: []
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
    allowedIpRanges: privateNetworking ? [] : vaultAllowedIpRanges
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

var configToml = join(concat([
  '# Generated by deploy/bicep/main.bicep; extraConfigToml follows.'
  '[vault]'
  'url = "${vault.outputs.uri}"'
  'credential = { kind = "managed-identity", client_id = "${identity.outputs.clientId}" }'
  ''
  '[webhook]'
  'listen = "0.0.0.0:8080"'
  ''
  '[webhook.auth]'
  'mode = "entra-id"'
  'tenant_id = "${webhookTenantId}"'
  'audience = [${audienceToml}]'
  ''
  '# The admin listener (/metrics, /healthz, /readyz) stays on loopback: Container Apps'
  '# has no scraper to reach it and its probes use the webhook port; a sidecar in the'
  '# same replica can scrape it (docs/deploy.md, "Logs and metrics"). Never behind the ingress.'
  '[admin]'
  'listen = "127.0.0.1:9464"'
  ''
], [
  extraConfigToml
]), '\n')

module worker 'modules/containerapp.bicep' = {
  name: 'kvr-worker'
  params: {
    environmentName: '${namePrefix}-env'
    appName: '${namePrefix}-worker'
    location: location
    tags: tags
    image: image
    registryName: containerRegistryName
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    identityPrincipalId: identity.outputs.principalId
    logAnalyticsWorkspaceName: logs.outputs.name
    infrastructureSubnetId: privateNetworking ? network.outputs.appsSubnetId : ''
    configToml: configToml
    vaultUri: vault.outputs.uri
    secretEnv: secretEnv
    ingressAllowedCidrs: ingressAllowedCidrs
    cpu: cpu
    memory: memory
  }
  // The role must be in place before Container Apps reads Key Vault references, and
  // the vault's name must resolve privately before the worker starts.
  dependsOn: [
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
    functionId: ''
    webhookUrl: worker.outputs.webhookUrl
    webhookTenantId: webhookTenantId
    webhookAppIdOrUri: webhookAppIdOrUri
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

@description('The webhook URL the event subscription delivers to.')
output webhookUrl string = worker.outputs.webhookUrl

@description('Name of the Container App.')
output appName string = worker.outputs.appName

@description('Client id of the worker identity.')
output workerClientId string = identity.outputs.clientId

@description('Principal (object) id of the worker identity.')
output workerPrincipalId string = identity.outputs.principalId

@description('Resource id of the vault\'s Event Grid system topic.')
output systemTopicId string = events.outputs.topicId
