// The Functions host's own storage account (AzureWebJobsStorage) for the Flex Consumption
// app of functions.bicep: the deployment package's blob container, and what the host keeps
// in blobs (the timer trigger's schedule status and singleton lock, the function keys).
// No shared keys: the worker identity reaches it with Entra ID, and gets Storage Blob Data
// Owner on this account only. It holds nothing of kv-rotator's (no secret, no journal).

@description('Name of the storage account: 3-24 lowercase letters and digits, globally unique.')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags set on every resource.')
param tags object

@description('Replication of the account. Its content can be recreated (redeploy the package; the host recreates its blobs and keys, callers then need new function keys).')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param skuName string

@description('Blob container holding the deployment package (functionAppConfig.deployment.storage).')
param deploymentContainerName string

@description('true: public network access disabled; the host reaches the blob endpoint through a private endpoint (private-endpoint.bicep, group blob) from its virtual network integration. false: the public endpoint, open to every network (Flex Consumption instances have no fixed addresses) but to Entra-authorized requests only.')
param privateOnly bool

@description('Object (principal) id of the worker identity, which the Functions host authenticates with.')
param identityPrincipalId string

@description('Resource id of the worker identity, which names the role assignment deterministically.')
param identityId string

// Storage Blob Data Owner: what Microsoft's Flex Consumption samples assign for
// AzureWebJobsStorage and the deployment container. Owner rather than Contributor: the
// host creates its containers and manages blob leases (the timer's singleton lock).
var blobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: Deny with privateOnly (functions.bicep's default, public network access disabled too); without it Allow on purpose: Flex Consumption instances have no fixed outbound addresses and the Functions host is no trusted service; no shared keys, so every request is still Entra-authorized
  // checkov:skip=CKV_AZURE_206: replication is the deployer's choice (hostStorageSkuName, default Standard_LRS): the content is recreated by redeploying the package
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    publicNetworkAccess: privateOnly ? 'Disabled' : 'Enabled'
    networkAcls: {
      defaultAction: privateOnly ? 'Deny' : 'Allow'
      bypass: 'None'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

// On the account, not the deployment container: the host creates and uses its own
// containers (azure-webjobs-hosts, azure-webjobs-secrets) next to it.
resource workerBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, identityId, blobDataOwnerRoleId)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataOwnerRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    description: 'kv-rotator Functions host: deployment package, timer schedule and lock, function keys (AzureWebJobsStorage)'
  }
}

@description('Resource id of the storage account.')
output id string = account.id

@description('Name of the storage account.')
output name string = account.name

@description('Blob endpoint, https://NAME.blob.core.windows.net/ (AzureWebJobsStorage__blobServiceUri).')
output blobEndpoint string = account.properties.primaryEndpoints.blob

@description('URL of the deployment container (functionAppConfig.deployment.storage.value).')
output deploymentContainerUrl string = '${account.properties.primaryEndpoints.blob}${deploymentContainer.name}'

@description('Resource id of the worker identity\'s role assignment (the app depends on it).')
output roleAssignmentId string = workerBlobDataOwner.id
