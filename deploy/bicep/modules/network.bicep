// Private connectivity: a virtual network with a subnet delegated to
// Microsoft.App/environments (the Container Apps environment of main.bicep, or the Flex
// Consumption function app's virtual network integration of functions.bicep) and one for
// private endpoints, the private DNS zone that makes the vault's name resolve to its
// private endpoint inside the network, and any further zones (extraDnsZoneNames).

@description('Name of the virtual network.')
param name string

@description('Azure region.')
param location string

@description('Tags set on every resource.')
param tags object

@description('Address space of the virtual network.')
param addressPrefix string

@description('Subnet delegated to Microsoft.App/environments: the Container Apps environment\'s (workload profiles environment: /27 or larger), or the Flex Consumption function app\'s virtual network integration (one address per instance).')
param appsSubnetPrefix string

@description('Subnet of the private endpoints (the vault\'s, and any you add for targets): /28 or larger.')
param privateEndpointsSubnetPrefix string

@description('Private DNS zone of Key Vault private endpoints: privatelink.vaultcore.azure.net in Azure public cloud (privatelink.vaultcore.usgovcloudapi.net, privatelink.vaultcore.azure.cn elsewhere).')
param vaultDnsZoneName string

@description('Further private DNS zones created and linked to the network, e.g. [\'privatelink.blob.core.windows.net\'] for the Functions host storage\'s private endpoint. Empty: none.')
param extraDnsZoneNames array

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

resource extraDnsZones 'Microsoft.Network/privateDnsZones@2020-06-01' = [for zoneName in extraDnsZoneNames: {
  name: zoneName
  location: 'global'
  tags: tags
}]

resource extraDnsZoneLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = [for (zoneName, i) in extraDnsZoneNames: {
  parent: extraDnsZones[i]
  name: '${name}-link'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnet.id
    }
  }
}]

@description('Resource id of the virtual network.')
output vnetId string = vnet.id

@description('Resource id of the subnet delegated to Microsoft.App/environments.')
output appsSubnetId string = vnet.properties.subnets[0].id

@description('Resource id of the private endpoints\' subnet.')
output privateEndpointsSubnetId string = vnet.properties.subnets[1].id

@description('Resource id of the vault\'s private DNS zone.')
output vaultDnsZoneId string = vaultDnsZone.id

@description('Resource ids of the extraDnsZoneNames zones, in the same order.')
output extraDnsZoneIds array = [for (zoneName, i) in extraDnsZoneNames: extraDnsZones[i].id]
