// Event Grid: the vault's system topic and one subscription delivering SecretNearExpiry
// and SecretExpired to kv-rotator, a retry policy, and dead-lettering to blob storage with
// the topic's own managed identity. The destination is either
//   - kv-rotator's webhook with Microsoft Entra authentication (main.bicep, Container Apps):
//     creating the subscription runs Event Grid's validation handshake against the webhook,
//     so the Container App must be up, and the Entra app registration ready (docs/deploy.md);
//   - or an Event Grid-triggered function (functionId, functions.bicep): endpoint type
//     AzureFunction, which Event Grid authenticates with the Event Grid extension's system
//     key it fetches itself (the template holds no key); the function must already be
//     deployed in the app, or the subscription is refused (destination endpoint not found).

@description('Name of the system topic.')
param topicName string

@description('Azure region (the vault\'s).')
param location string

@description('Tags set on every resource.')
param tags object

@description('Resource id of the vault whose events the topic carries.')
param vaultId string

@description('false: the topic only (and its dead-letter role), no subscription; deploy it once the webhook answers.')
param deploySubscription bool

@description('Resource id of an Event Grid-triggered function, FUNCTION_APP_ID/functions/NAME: the subscription delivers to it (endpoint type AzureFunction) and the webhook parameters are ignored. Empty: deliver to the webhook.')
param functionId string

@description('Without functionId: HTTPS URL of the webhook, https://HOST/api/eventgrid.')
param webhookUrl string

@description('Without functionId: Microsoft Entra tenant of the webhook\'s app registration.')
param webhookTenantId string

@description('Without functionId: application (client) id or App ID URI of the webhook\'s app registration, the audience of the tokens Event Grid sends.')
param webhookAppIdOrUri string

@description('Events per delivery (1-5000). The webhook queues each event and answers at once; a full queue answers 503 and Event Grid retries the batch. To a function, 1 keeps each event\'s delivery (and redelivery) its own.')
@minValue(1)
@maxValue(5000)
param maxEventsPerBatch int

@description('Delivery attempts per event before it is dead-lettered (1-30).')
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int

@description('Minutes an event is retried before it is dead-lettered (1-1440). The sweeper finds due secrets anyway.')
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int

@description('Name of the dead-letter storage account (deadletter.bicep), in this resource group.')
param deadLetterAccountName string

@description('Name of the dead-letter blob container.')
param deadLetterContainerName string

// Storage Blob Data Contributor: write the dead-lettered events as blobs.
var blobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

var webhookDestination = {
  endpointType: 'WebHook'
  properties: {
    endpointUrl: webhookUrl
    azureActiveDirectoryTenantId: webhookTenantId
    azureActiveDirectoryApplicationIdOrUri: webhookAppIdOrUri
    maxEventsPerBatch: maxEventsPerBatch
    preferredBatchSizeInKilobytes: 64
  }
}

// No key and no URL: Event Grid resolves the function and its system key itself.
var functionDestination = {
  endpointType: 'AzureFunction'
  properties: {
    resourceId: functionId
    maxEventsPerBatch: maxEventsPerBatch
    preferredBatchSizeInKilobytes: 64
  }
}

resource deadLetterAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: deadLetterAccountName
}

resource deadLetterBlobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: deadLetterAccount
  name: 'default'
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: deadLetterBlobs
  name: deadLetterContainerName
}

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: topicName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: vaultId
    topicType: 'Microsoft.KeyVault.vaults'
  }
}

// Scoped to the dead-letter container only.
resource topicWritesDeadLetters 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deadLetterContainer.id, topic.id, blobDataContributorRoleId)
  scope: deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataContributorRoleId)
    principalId: topic.identity.principalId
    principalType: 'ServicePrincipal'
    description: 'Event Grid system topic of the kv-rotator vault: write dead-lettered events'
  }
}

resource deliveries 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = if (deploySubscription) {
  parent: topic
  name: 'kv-rotator'
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    destination: empty(functionId) ? webhookDestination : functionDestination
    filter: {
      includedEventTypes: [
        'Microsoft.KeyVault.SecretNearExpiry'
        'Microsoft.KeyVault.SecretExpired'
      ]
    }
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: deadLetterAccount.id
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
  dependsOn: [
    topicWritesDeadLetters
  ]
}

@description('Resource id of the system topic.')
output topicId string = topic.id

@description('Principal id of the system topic\'s managed identity.')
output topicPrincipalId string = topic.identity.principalId
