// The worker's user-assigned managed identity. Its only role is on the vault
// (keyvault.bicep) and, when the image is in an Azure Container Registry, AcrPull on
// that registry (containerapp.bicep).

@description('Name of the user-assigned managed identity.')
param name string

@description('Azure region.')
param location string

@description('Tags set on every resource.')
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

@description('Resource id of the identity.')
output id string = identity.id

@description('Client (application) id: kv-rotator\'s vault.credential client_id.')
output clientId string = identity.properties.clientId

@description('Object (principal) id: what role assignments name.')
output principalId string = identity.properties.principalId
