// Dead-lettering: a storage account and blob container where Event Grid writes the
// events it could not deliver within the retry policy. Event Grid's system topic writes
// with its own managed identity (role assignment in eventgrid.bicep), so the account
// accepts no shared keys and no public blob access.

@description('Name of the storage account: 3-24 lowercase letters and digits, globally unique.')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags set on every resource.')
param tags object

@description('Blob container receiving dead-lettered events.')
param containerName string

@description('Replication of the account. A dead-lettered event is a hint (the sweeper finds due secrets anyway): LRS or ZRS is enough for many.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param skuName string

@description('Days a deleted dead-letter blob stays recoverable.')
@minValue(1)
@maxValue(365)
param deleteRetentionDays int

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_59: Event Grid writes dead letters through the public endpoint as a trusted Azure service (bypass AzureServices, with its managed identity); defaultAction Deny lets nothing else in
  // checkov:skip=CKV_AZURE_206: replication is the deployer's choice (deadLetterSkuName, default Standard_GRS); a dead-lettered event is a hint the sweeper makes up for
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
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      // Event Grid writes dead letters as a trusted service with its managed identity.
      // Operators reading them add their address here or a private endpoint.
      defaultAction: 'Deny'
      bypass: 'AzureServices'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: deleteRetentionDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: deleteRetentionDays
    }
  }
}

resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: containerName
  properties: {
    publicAccess: 'None'
  }
}

@description('Resource id of the storage account (Event Grid\'s dead-letter destination).')
output accountId string = account.id

@description('Name of the storage account.')
output accountName string = account.name

@description('Name of the blob container.')
output containerName string = container.name
