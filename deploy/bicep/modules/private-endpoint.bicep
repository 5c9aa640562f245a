// A private endpoint in the private endpoints subnet, registered in its private DNS zone
// so the resource's public name resolves to its private address inside the virtual
// network: the vault's (group vault, zone privatelink.vaultcore.azure.net) and, for the
// Functions variant, the host storage's blob endpoint (group blob, privatelink.blob...).

@description('Name of the private endpoint.')
param name string

@description('Azure region (the virtual network\'s).')
param location string

@description('Tags set on every resource.')
param tags object

@description('Resource id of the resource the endpoint connects to (the vault, a storage account).')
param targetId string

@description('Private link sub-resource (group id) of the target: vault for a Key Vault; blob, queue or table for a storage account.')
param groupId string

@description('Resource id of the subnet the endpoint gets its address from.')
param subnetId string

@description('Resource id of the private DNS zone of that group: privatelink.vaultcore.azure.net (vault), privatelink.blob.core.windows.net (blob), ...')
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
        name: groupId
        properties: {
          privateLinkServiceId: targetId
          groupIds: [
            groupId
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
        name: groupId
        properties: {
          privateDnsZoneId: dnsZoneId
        }
      }
    ]
  }
}

@description('Resource id of the private endpoint.')
output id string = endpoint.id
