// The Azure Functions variant of kv-rotator (deploy/functions): a Flex Consumption plan
// and its one Linux function app running the custom handler (runtime custom), with the
// worker identity, its host storage reached by identity (function-storage.bicep), the app
// settings functions.bicep composes, and, with private connectivity, outbound traffic
// through the virtual network. The code (host.json, the three functions, the kv-rotator
// binary, config.toml) is not deployed here: it is the zip package of docs/deploy.md,
// section 8, deployed to the app afterwards.

@description('Name of the Flex Consumption plan.')
param planName string

@description('Name of the function app: globally unique, it names APP.azurewebsites.net.')
param appName string

@description('Azure region.')
param location string

@description('Tags set on every resource.')
param tags object

@description('Resource id of the worker\'s user-assigned managed identity (the app\'s only identity).')
param identityId string

@description('URL of the deployment package container in the host storage account.')
param deploymentContainerUrl string

@description('Memory of each instance in MB: 512, 2048 or 4096.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int

@description('Maximum number of on-demand instances per scale group (1-1000); see functions.bicep for why it is kept at the lowest value.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int

@description('Resource id of the subnet delegated to Microsoft.App/environments for virtual network integration (network.bicep); empty: none.')
param subnetId string

@description('Every app setting, as an object of names and string values: the host\'s (storage, Application Insights) and kv-rotator\'s (KV_ROTATOR_<SECTION>__<KEY>). The Functions runtime is not one of them (functionAppConfig.runtime).')
param appSettings object

// The settings as App Service wants them: a name/value array. Flex Consumption lists
// FUNCTIONS_WORKER_RUNTIME and FUNCTIONS_EXTENSION_VERSION as deprecated settings: the
// runtime is functionAppConfig.runtime below, and functions.bicep sets neither.
var appSettingList = [for setting in items(appSettings): {
  name: setting.key
  value: setting.value
}]

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy spreads instances over zones, and kv-rotator runs one engine per vault (maximumInstanceCount, the engine lease); an outage is made up by Event Grid's retries (24 h) and the timer-triggered sweep
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    // Linux: custom handlers on Flex Consumption run on Linux only.
    reserved: true
  }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: Event Grid delivers to the eventgrid function over the internet only, authenticated by the Event Grid extension's system key; rotate takes a function key (docs/deploy.md, section 8)
  // checkov:skip=CKV_AZURE_17: Event Grid presents no client certificate; callers authenticate with function keys
  // checkov:skip=CKV_AZURE_212: one engine per vault by design (the engine lease refuses a second one); a lost instance is replaced on the next event, and Event Grid retries meanwhile
  name: appName
  location: location
  // checkov:skip=CKV_AZURE_213: no health check to probe: the app scales to zero, and the handler serves only the three functions of deploy/functions; failures show as failed invocations in Application Insights
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // Event Grid and the callers of rotate reach the app over the internet (keys).
    publicNetworkAccess: 'Enabled'
    virtualNetworkSubnetId: empty(subnetId) ? null : subnetId
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: appSettingList
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      // A custom handler: the host runs host.json's customHandler (the kv-rotator binary).
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
  }
}

@description('Resource id of the function app.')
output id string = app.id

@description('Name of the function app.')
output name string = app.name

@description('Default host name of the function app (where rotate is called and Event Grid delivers).')
output defaultHostName string = app.properties.defaultHostName
