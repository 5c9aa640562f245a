// The vault's private endpoint in the private endpoints subnet, registered in the
// privatelink.vaultcore.azure.net zone so NAME.vault.azure.net resolves to its private
// address inside the virtual network.

@description('Name of the private endpoint.')
param name string

@description('Azure region (the virtual network\'s).')
param location string

@description('Tags set on every resource.')
param tags object

@description('Resource id of the vault.')
param vaultId string

@description('Resource id of the subnet the endpoint gets its address from.')
param subnetId string

@description('Resource id of the privatelink.vaultcore.azure.net private DNS zone.')
param dnsZoneId string

resource endpoint 'Microsoft.Network/privateEndpoints@2023-11-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    subnet: {
      id: subnetId
    }
    privateLinkServiceConnections: [
      {
        name: 'vault'
        properties: {
          privateLinkServiceId: vaultId
          groupIds: [
            'vault'
          ]
        }
      }
    ]
  }
}

resource dnsZoneGroup 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2023-11-01' = {
  parent: endpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: 'vault'
        properties: {
          privateDnsZoneId: dnsZoneId
        }
      }
    ]
  }
}

@description('Resource id of the private endpoint.')
output id string = endpoint.id
