// Private connectivity: a virtual network with a subnet for the Container Apps
// environment (delegated to Microsoft.App/environments) and one for private endpoints,
// and the private DNS zone that makes the vault's name resolve to its private endpoint
// inside the network.

@description('Name of the virtual network.')
param name string

@description('Azure region.')
param location string

@description('Tags set on every resource.')
param tags object

@description('Address space of the virtual network.')
param addressPrefix string

@description('Subnet of the Container Apps environment (workload profiles environment: /27 or larger), delegated to Microsoft.App/environments.')
param appsSubnetPrefix string

@description('Subnet of the private endpoints (the vault\'s, and any you add for targets): /28 or larger.')
param privateEndpointsSubnetPrefix string

@description('Private DNS zone of Key Vault private endpoints: privatelink.vaultcore.azure.net in Azure public cloud (privatelink.vaultcore.usgovcloudapi.net, privatelink.vaultcore.azure.cn elsewhere).')
param vaultDnsZoneName string

// Empty network security groups: Azure's default rules (virtual network and load
// balancer in, virtual network and internet out). Add your own rules here, e.g. to
// restrict the workers' egress to the vault's endpoint and the targets.
resource appsNsg 'Microsoft.Network/networkSecurityGroups@2023-11-01' = {
  name: '${name}-apps-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: []
  }
}

resource endpointsNsg 'Microsoft.Network/networkSecurityGroups@2023-11-01' = {
  name: '${name}-endpoints-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: []
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2023-11-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: 'apps'
        properties: {
          addressPrefix: appsSubnetPrefix
          networkSecurityGroup: {
            id: appsNsg.id
          }
          delegations: [
            {
              name: 'container-apps'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        name: 'private-endpoints'
        properties: {
          addressPrefix: privateEndpointsSubnetPrefix
          networkSecurityGroup: {
            id: endpointsNsg.id
          }
          privateEndpointNetworkPolicies: 'Enabled'
        }
      }
    ]
  }
}

resource vaultDnsZone 'Microsoft.Network/privateDnsZones@2020-06-01' = {
  name: vaultDnsZoneName
  location: 'global'
  tags: tags
}

resource vaultDnsZoneLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = {
  parent: vaultDnsZone
  name: '${name}-link'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnet.id
    }
  }
}

@description('Resource id of the virtual network.')
output vnetId string = vnet.id

@description('Resource id of the Container Apps environment\'s subnet.')
output appsSubnetId string = vnet.properties.subnets[0].id

@description('Resource id of the private endpoints\' subnet.')
output privateEndpointsSubnetId string = vnet.properties.subnets[1].id

@description('Resource id of the vault\'s private DNS zone.')
output vaultDnsZoneId string = vaultDnsZone.id
