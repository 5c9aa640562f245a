// The Key Vault holding the managed secrets, with RBAC authorization, its audit log
// sent to Log Analytics, and the worker identity's one role: Key Vault Secrets Officer
// on this vault only.

@description('Name of the vault: 3-24 letters, digits and dashes, globally unique.')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags set on every resource.')
param tags object

@description('Microsoft Entra tenant that authenticates requests to the vault.')
param tenantId string

@description('Days a deleted secret stays recoverable (7-90). kv-rotator deletes each journal record once its rotation finishes: the record, and the password it holds, stays recoverable this long by principals with the recover permission (Secrets Officer, not Secrets User).')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int

@description('true: public network access disabled; the vault is reached through its private endpoint only (private-endpoint.bicep).')
param privateOnly bool

@description('CIDR ranges (or single addresses) allowed through the vault firewall when privateOnly is false. Empty: no firewall rule, the vault answers every network (every request is still authenticated and authorized by RBAC).')
param allowedIpRanges array

@description('Object (principal) id of the worker identity; it gets Key Vault Secrets Officer on this vault.')
param workerPrincipalId string

@description('Resource id of the worker identity, which names the role assignment deterministically.')
param workerIdentityId string

@description('Resource id of the Log Analytics workspace receiving the vault audit log (every secret read and write, and by whom).')
param logAnalyticsWorkspaceId string

// Key Vault Secrets Officer: data actions Microsoft.KeyVault/vaults/secrets/*. The worker
// calls get (value and properties), list (secrets and versions), set (new versions,
// journal records, the engine lease), update (tags: failure tag, lease, journal steps)
// and delete (finished journal records). docs/deploy.md names a narrower custom role.
var secretsOfficerRoleId = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: the firewall's default action is Deny with privateOnly (the default: public network access disabled too) or with allowedIpRanges; Allow only for a public vault without ranges, as the deployer chose
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    // The worker never purges; purge protection keeps anyone else from erasing a
    // deleted secret's versions before the retention ends.
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: privateOnly ? 'Disabled' : 'Enabled'
    networkAcls: {
      // Event Grid needs no network access to the vault: Key Vault publishes its own events.
      bypass: 'AzureServices'
      defaultAction: (privateOnly || !empty(allowedIpRanges)) ? 'Deny' : 'Allow'
      ipRules: [for ipRange in allowedIpRanges: {
        value: ipRange
      }]
    }
  }
}

resource workerSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, workerIdentityId, secretsOfficerRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsOfficerRoleId)
    principalId: workerPrincipalId
    principalType: 'ServicePrincipal'
    description: 'kv-rotator worker: get, list, set, update and delete the secrets of this vault (rotations, journal records, engine lease)'
  }
}

resource audit 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: vault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

@description('Resource id of the vault.')
output id string = vault.id

@description('Name of the vault.')
output name string = vault.name

@description('Vault URI, e.g. https://NAME.vault.azure.net/ (kv-rotator\'s vault.url).')
output uri string = vault.properties.vaultUri

@description('Resource id of the worker\'s role assignment (deployments that need the role in place depend on it).')
output workerRoleAssignmentId string = workerSecretsOfficer.id
