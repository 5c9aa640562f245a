// The Container Apps environment (logs to Log Analytics; in the virtual network with
// private connectivity) and the kv-rotator Container App: HTTPS ingress for Event Grid,
// the worker identity, /healthz probes, one replica in single revision mode (an update
// needs no step by hand), the configuration file mounted from a Container Apps secret,
// and Key Vault secrets referenced as environment variables.

@description('Name of the Container Apps environment.')
param environmentName string

@description('Name of the Container App.')
param appName string

@description('Azure region.')
param location string

@description('Tags set on every resource.')
param tags object

@description('Image of kv-rotator (deploy/container/Containerfile), e.g. myregistry.azurecr.io/kv-rotator:0.1.0.')
param image string

@description('Name of an Azure Container Registry in this resource group holding the image: the worker identity gets AcrPull on it and pulls with it. Empty: the image is pulled anonymously.')
param registryName string

@description('Resource id of the worker\'s user-assigned managed identity.')
param identityId string

@description('Client id of the worker\'s user-assigned managed identity.')
param identityClientId string

@description('Principal (object) id of the worker\'s user-assigned managed identity.')
param identityPrincipalId string

@description('Name of the Log Analytics workspace receiving the container\'s logs.')
param logAnalyticsWorkspaceName string

@description('Resource id of the environment\'s subnet (network.bicep); empty: an environment outside any virtual network.')
param infrastructureSubnetId string

@description('kv-rotator\'s configuration file (TOML), mounted at /etc/kv-rotator/config.toml. It holds no password: credentials are Key Vault secret names or environment variables.')
param configToml string

@description('Vault URI, https://NAME.vault.azure.net/.')
param vaultUri string

@description('Key Vault secrets given to the container as environment variables, through Container Apps Key Vault references read with the worker identity: [{ env: \'KVR_WEBHOOK_KEY\', secret: \'webhook-key\' }]. Versionless, so Container Apps picks up a new version within 30 minutes (a restart takes it at once).')
param secretEnv array

@description('CIDR ranges allowed to reach the ingress; empty: every address (each delivery is still authenticated).')
param ingressAllowedCidrs array

@description('vCPUs of the container, e.g. \'0.5\' (with memory \'1Gi\'); Container Apps allows fixed pairs.')
param cpu string

@description('Memory of the container, e.g. \'1Gi\'.')
param memory string

var acrPullRoleId = '7f951dfd-4ed5-4e3b-a519-27d8e8ab8d0f'
var configMountPath = '/etc/kv-rotator'

var vaultSecretRefs = [for s in secretEnv: {
  name: toLower(replace(s.env, '_', '-'))
  keyVaultUrl: '${vaultUri}secrets/${s.secret}'
  identity: identityId
}]

var vaultSecretVars = [for s in secretEnv: {
  name: s.env
  secretRef: toLower(replace(s.env, '_', '-'))
}]

var ipRules = [for (cidr, i) in ingressAllowedCidrs: {
  name: 'allow-${i}'
  description: 'allowed range ${cidr}'
  action: 'Allow'
  ipAddressRange: cidr
}]

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: logAnalyticsWorkspaceName
}

// Referenced only by the conditional role assignment below.
resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = {
  name: registryName
}

// AcrPull on this one registry: pull the image, nothing else.
resource workerPullsImage 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(registryName)) {
  name: guid(resourceId('Microsoft.ContainerRegistry/registries', registryName), identityId, acrPullRoleId)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPullRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    description: 'kv-rotator worker: pull its image'
  }
}

resource managedEnvironment 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: environmentName
  location: location
  tags: tags
  properties: {
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: workspace.properties.customerId
        sharedKey: workspace.listKeys().primarySharedKey
      }
    }
    // external ingress even in the virtual network: Event Grid delivers to a public
    // HTTPS endpoint only (docs/deploy.md, "How Event Grid reaches the webhook").
    vnetConfiguration: empty(infrastructureSubnetId) ? null : {
      infrastructureSubnetId: infrastructureSubnetId
      internal: false
    }
    workloadProfiles: [
      {
        name: 'Consumption'
        workloadProfileType: 'Consumption'
      }
    ]
  }
}

resource app 'Microsoft.App/containerApps@2024-03-01' = {
  name: appName
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    environmentId: managedEnvironment.id
    workloadProfileName: 'Consumption'
    configuration: {
      // One engine per vault (the engine lease): a new revision's replica waits in
      // standby (listening, /healthz up, rotating nothing) while the previous revision's
      // holds the lease. Single: once the new revision is ready, Container Apps moves the
      // traffic to it and stops the old one, whose SIGTERM releases the lease; the new
      // one takes over at its next claim (docs/deploy.md, "Updating").
      activeRevisionsMode: 'Single'
      // The webhook's port only. The admin listener (/metrics, /readyz) stays on the
      // replica's loopback (127.0.0.1:9464, set in the generated configuration): never
      // add it to the ingress (no additionalPortMappings), it is unauthenticated.
      ingress: {
        external: true
        targetPort: 8080
        transport: 'http'
        allowInsecure: false
        // No traffic weights: in Single mode the traffic goes to the latest ready revision.
        ipSecurityRestrictions: ipRules
      }
      registries: empty(registryName) ? [] : [
        {
          server: '${registryName}${environment().suffixes.acrLoginServer}'
          identity: identityId
        }
      ]
      secrets: concat([
        {
          name: 'config-toml'
          value: configToml
        }
      ], vaultSecretRefs)
    }
    template: {
      terminationGracePeriodSeconds: 30
      containers: [
        {
          name: 'kv-rotator'
          image: image
          args: [
            '--log-format'
            'json'
            'serve'
            '--config'
            '${configMountPath}/config.toml'
          ]
          env: concat([
            {
              name: 'AZURE_CLIENT_ID'
              value: identityClientId
            }
          ], vaultSecretVars)
          resources: {
            cpu: json(cpu)
            memory: memory
          }
          // All three on the webhook's /healthz (port 8080), none on the admin listener,
          // which stays on loopback here, out of the probes' reach. Readiness in particular
          // is not /readyz as on Kubernetes: see the comment of the Readiness probe.
          probes: [
            {
              // serve claims the engine lease (a few seconds when it is free, at once
              // into standby when another replica holds it) before it listens.
              type: 'Startup'
              httpGet: {
                path: '/healthz'
                port: 8080
              }
              initialDelaySeconds: 3
              periodSeconds: 5
              timeoutSeconds: 3
              failureThreshold: 10
            }
            {
              type: 'Liveness'
              httpGet: {
                path: '/healthz'
                port: 8080
              }
              periodSeconds: 30
              timeoutSeconds: 5
              failureThreshold: 3
            }
            {
              // Container Apps stops the old revision only once the new one is ready, and
              // the new serve holds the engine lease only once the old one stopped: a
              // readiness that waited for the lease (/readyz) would hold every update
              // forever. This one answers as soon as the webhook listens, in standby too
              // (where deliveries get 503 + Retry-After and Event Grid retries them).
              type: 'Readiness'
              httpGet: {
                path: '/healthz'
                port: 8080
              }
              periodSeconds: 10
              timeoutSeconds: 3
              failureThreshold: 3
            }
          ]
          volumeMounts: [
            {
              volumeName: 'config'
              mountPath: configMountPath
            }
          ]
        }
      ]
      // Exactly one replica: one engine per vault is enforced by the engine lease (a
      // second replica would only wait in standby), and the sweeper and the resumption of
      // unfinished journals run in the background, so the app never scales to zero.
      scale: {
        minReplicas: 1
        maxReplicas: 1
        rules: []
      }
      volumes: [
        {
          name: 'config'
          storageType: 'Secret'
          secrets: [
            {
              secretRef: 'config-toml'
              path: 'config.toml'
            }
          ]
        }
      ]
    }
  }
  dependsOn: [
    workerPullsImage
  ]
}

@description('Public host name of the Container App\'s ingress.')
output fqdn string = app.properties.configuration.ingress.fqdn

@description('The webhook URL Event Grid delivers to.')
output webhookUrl string = 'https://${app.properties.configuration.ingress.fqdn}/api/eventgrid'

@description('Name of the Container App.')
output appName string = app.name

@description('Name of the latest revision.')
output latestRevisionName string = app.properties.latestRevisionName
