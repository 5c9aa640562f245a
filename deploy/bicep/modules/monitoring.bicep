// Log Analytics: the worker's logs (stdout/stderr of the container, including the
// `kv_rotator::audit` records) and the vault's audit log land here.

@description('Name of the Log Analytics workspace.')
param name string

@description('Azure region.')
param location string

@description('Tags set on every resource.')
param tags object

@description('Days logs are kept (30 is included in the Log Analytics price; up to 730).')
@minValue(30)
@maxValue(730)
param retentionInDays int

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
  }
}

@description('Resource id of the workspace.')
output id string = workspace.id

@description('Name of the workspace.')
output name string = workspace.name
