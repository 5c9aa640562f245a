// Application Insights for the Functions variant (functions.bicep): the invocations of
// the eventgrid, rotate and sweep functions, with their logs, stored in the Log Analytics
// workspace. Local authentication (the instrumentation key alone) is disabled: the host
// sends telemetry with an Entra token of the worker identity, which gets Monitoring
// Metrics Publisher on this component only.

@description('Name of the Application Insights component.')
param name string

@description('Azure region.')
param location string

@description('Tags set on every resource.')
param tags object

@description('Resource id of the Log Analytics workspace the component stores into (monitoring.bicep).')
param logAnalyticsWorkspaceId string

@description('Object (principal) id of the identity that sends telemetry (the worker identity).')
param publisherPrincipalId string

@description('Resource id of that identity, which names the role assignment deterministically.')
param publisherIdentityId string

// Monitoring Metrics Publisher: send telemetry with an Entra token, nothing else (no read).
var metricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'

resource component 'Microsoft.Insights/components@2020-02-02' = {
  name: name
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalyticsWorkspaceId
    DisableLocalAuth: true
  }
}

resource publisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(component.id, publisherIdentityId, metricsPublisherRoleId)
  scope: component
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', metricsPublisherRoleId)
    principalId: publisherPrincipalId
    principalType: 'ServicePrincipal'
    description: 'kv-rotator Functions host: send invocation logs and telemetry to Application Insights'
  }
}

@description('Name of the component.')
output name string = component.name

@description('Connection string (APPLICATIONINSIGHTS_CONNECTION_STRING); it holds no secret: ingestion needs an Entra token.')
output connectionString string = component.properties.ConnectionString

@description('Resource id of the identity\'s role assignment (the app depends on it).')
output roleAssignmentId string = publisher.id
