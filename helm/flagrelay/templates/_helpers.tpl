{{/*
Helpers for the flagrelay chart.

Every helper takes a chart context (something with .Values, .Chart and
.Release): the root context `.` inside this chart, or `.Subcharts.flagrelay`
when an application chart that depends on this one includes the sidecar
template (see _sidecar.tpl).
*/}}

{{/* Paths inside the container where the chart mounts its files. */}}
{{- define "flagrelay.configDir" -}}/etc/flagrelay/conf{{- end }}
{{- define "flagrelay.configPath" -}}/etc/flagrelay/conf/flagrelay.toml{{- end }}
{{- define "flagrelay.flagsDir" -}}/etc/flagrelay/flags{{- end }}
{{- define "flagrelay.flagsPath" -}}/etc/flagrelay/flags/flags.json{{- end }}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "flagrelay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name: <release>-<name>, or the release name when it already
contains the chart name; truncated to the 63 characters DNS names allow.
*/}}
{{- define "flagrelay.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* <chart>-<version> for the helm.sh/chart label. */}}
{{- define "flagrelay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of the relay pods. */}}
{{- define "flagrelay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flagrelay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: relay
{{- end }}

{{/* Labels shared by every resource, without the component label. */}}
{{- define "flagrelay.baseLabels" -}}
helm.sh/chart: {{ include "flagrelay.chart" . }}
app.kubernetes.io/name: {{ include "flagrelay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- with .Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flagrelay
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of the relay's own resources. */}}
{{- define "flagrelay.labels" -}}
{{ include "flagrelay.baseLabels" . }}
app.kubernetes.io/component: relay
{{- end }}

{{/* ServiceAccount used by the relay pods (deployment mode). */}}
{{- define "flagrelay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flagrelay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference: repository@digest, or repository:tag (tag defaults to appVersion). */}}
{{- define "flagrelay.image" -}}
{{- $img := .Values.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (toString (default .Chart.AppVersion $img.tag)) }}
{{- end }}
{{- end }}

{{/* host:port, with brackets around IPv6 hosts. Takes (list host port). */}}
{{- define "flagrelay.hostPort" -}}
{{- $host := index . 0 | toString }}
{{- $port := index . 1 | int }}
{{- if and (contains ":" $host) (not (hasPrefix "[" $host)) }}
{{- printf "[%s]:%d" $host $port }}
{{- else }}
{{- printf "%s:%d" $host $port }}
{{- end }}
{{- end }}

{{/* API listen address for the chart's mode. */}}
{{- define "flagrelay.listen" -}}
{{- if eq .Values.mode "sidecar" }}
{{- include "flagrelay.hostPort" (list .Values.sidecar.listenHost .Values.ports.http) }}
{{- else }}
{{- include "flagrelay.hostPort" (list .Values.listenHost .Values.ports.http) }}
{{- end }}
{{- end }}

{{/* Admin listen address for the chart's mode. */}}
{{- define "flagrelay.adminListen" -}}
{{- if eq .Values.mode "sidecar" }}
{{- include "flagrelay.hostPort" (list .Values.sidecar.adminListenHost .Values.ports.admin) }}
{{- else }}
{{- include "flagrelay.hostPort" (list .Values.listenHost .Values.ports.admin) }}
{{- end }}
{{- end }}

{{/* Secret holding flagrelay.toml: the chart's own or config.existingSecret. */}}
{{- define "flagrelay.configSecretName" -}}
{{- default (include "flagrelay.fullname" .) .Values.config.existingSecret }}
{{- end }}

{{- define "flagrelay.configSecretKey" -}}
{{- if .Values.config.existingSecret }}
{{- .Values.config.existingSecretKey | default "flagrelay.toml" }}
{{- else -}}
flagrelay.toml
{{- end }}
{{- end }}

{{/* ConfigMap holding the flags file (file mode). */}}
{{- define "flagrelay.flagsConfigMapName" -}}
{{- $f := .Values.config.upstream.file }}
{{- default (printf "%s-flags" (include "flagrelay.fullname" . | trunc 57 | trimSuffix "-")) $f.existingConfigMap }}
{{- end }}

{{- define "flagrelay.flagsConfigMapKey" -}}
{{- if .Values.config.upstream.file.existingConfigMap }}
{{- .Values.config.upstream.file.existingConfigMapKey | default "flags.json" }}
{{- else -}}
flags.json
{{- end }}
{{- end }}

{{/* Secret holding the Redis URL (redis mode). */}}
{{- define "flagrelay.redisSecretName" -}}
{{- default (include "flagrelay.fullname" .) .Values.config.upstream.redis.existingSecret }}
{{- end }}

{{- define "flagrelay.redisSecretKey" -}}
{{- if .Values.config.upstream.redis.existingSecret }}
{{- .Values.config.upstream.redis.existingSecretKey | default "redis-url" }}
{{- else -}}
redis-url
{{- end }}
{{- end }}

{{/* Whether the chart renders its own Secret, and what goes in it. */}}
{{- define "flagrelay.rendersConfigSecret" -}}
{{- if not .Values.config.existingSecret }}true{{ end }}
{{- end }}

{{- define "flagrelay.rendersRedisSecret" -}}
{{- $r := .Values.config.upstream.redis }}
{{- if and (eq .Values.config.upstream.kind "redis") (not $r.existingSecret) }}true{{ end }}
{{- end }}

{{- define "flagrelay.rendersFlagsConfigMap" -}}
{{- $u := .Values.config.upstream }}
{{- if and (eq $u.kind "file") (not $u.file.existingConfigMap) }}true{{ end }}
{{- end }}

{{/*
One TOML value from a values scalar or list. toJson output is valid TOML for
these: strings (JSON escapes are TOML escapes), whole numbers (Helm keeps
numbers as float64; toJson prints 5, not 5.0), booleans, arrays of those.
Takes (list key value); fails on maps, which need a table.
*/}}
{{- define "flagrelay.tomlValue" -}}
{{- $key := index . 0 }}
{{- $val := index . 1 }}
{{- if kindIs "map" $val }}
{{- fail (printf "config: %q is a map; only strings, numbers, booleans and lists are allowed here" $key) }}
{{- end }}
{{- if kindIs "slice" $val }}
{{- range $val }}
{{- if or (kindIs "map" .) (kindIs "slice" .) }}
{{- fail (printf "config: %q may list only strings, numbers and booleans" $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $val }}
{{- end }}

{{/* A TOML key: bare when it can be, else quoted. */}}
{{- define "flagrelay.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/*
key = value lines for a map of scalars, then [prefix.key] sub-tables for
nested maps when "subtables" is true (else a nested map fails the render).
Takes (dict "table" map "prefix" "http" "reserved" list "subtables" bool).
*/}}
{{- define "flagrelay.tomlEntries" -}}
{{- $t := .table | default dict }}
{{- $reserved := .reserved | default list }}
{{- range $k := keys $t | sortAlpha }}
{{- $v := index $t $k }}
{{- if has $k $reserved }}
{{- fail (printf "config: %q is set by the chart from its own values; remove it from the extra settings" $k) }}
{{- end }}
{{- if or (not (kindIs "map" $v)) (not $.subtables) }}
{{ include "flagrelay.tomlKey" $k }} = {{ include "flagrelay.tomlValue" (list (printf "%s.%s" $.prefix $k) $v) }}
{{- end }}
{{- end }}
{{- range $k := keys $t | sortAlpha }}
{{- $v := index $t $k }}
{{- if and (kindIs "map" $v) $.subtables }}

[{{ $.prefix }}.{{ include "flagrelay.tomlKey" $k }}]
{{- include "flagrelay.tomlEntries" (dict "table" $v "prefix" (printf "%s.%s" $.prefix $k) "subtables" true) }}
{{- end }}
{{- end }}
{{- end }}

{{/* A TOML array of strings (JSON string escapes are valid TOML). */}}
{{- define "flagrelay.tomlStrings" -}}
{{- $out := list }}
{{- range . }}
{{- $out = append $out (toString .) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
The relay's flagrelay.toml. The Redis URL is never written here: it reaches
the relay as FLAGRELAY_REDIS_URL from a Secret.
*/}}
{{- define "flagrelay.configToml" -}}
{{- $c := .Values.config -}}
{{- $u := $c.upstream -}}
# flagrelay.toml, rendered by the flagrelay Helm chart (mode: {{ .Values.mode }}).
# Holds SDK keys: stored in a Secret. The FLAGRELAY_LISTEN and
# FLAGRELAY_ADMIN_LISTEN environment variables carry the same addresses.
listen = {{ include "flagrelay.listen" . | toJson }}
admin_listen = {{ include "flagrelay.adminListen" . | toJson }}
shutdown_timeout_secs = {{ int $c.shutdownTimeoutSecs }}

[upstream]
kind = {{ $u.kind | toJson }}
{{- if eq $u.kind "file" }}
path = {{ include "flagrelay.flagsPath" . | toJson }}
poll_interval_ms = {{ int $u.file.pollIntervalMs }}
{{- include "flagrelay.tomlEntries" (dict "table" $u.extra "prefix" "upstream" "reserved" (list "kind" "path" "poll_interval_ms" "url" "sentinel" "cluster" "cluster_seeds")) }}
{{- else if eq $u.kind "relay" }}
# Relay chaining: this relay follows the parent relay's relay stream.
url = {{ $u.relay.url | toString | toJson }}
{{- include "flagrelay.tomlEntries" (dict "table" $u.extra "prefix" "upstream" "reserved" (list "kind" "path" "poll_interval_ms" "url" "prefix" "sentinel" "cluster" "cluster_seeds")) }}
{{- else }}
# url: from the FLAGRELAY_REDIS_URL environment variable (Secret {{ include "flagrelay.redisSecretName" . }}, key {{ include "flagrelay.redisSecretKey" . }}).
prefix = {{ $u.redis.prefix | toString | toJson }}
{{- if $u.redis.cluster.enabled }}
# Redis Cluster: the URL is one seed node; each environment is followed on the primary owning its slot.
cluster = true
{{- with $u.redis.cluster.seeds }}
cluster_seeds = {{ include "flagrelay.tomlStrings" . }}
{{- end }}
{{- end }}
{{- include "flagrelay.tomlEntries" (dict "table" $u.extra "prefix" "upstream" "reserved" (list "kind" "path" "url" "prefix" "sentinel" "cluster" "cluster_seeds")) }}
{{- if $u.redis.sentinel.addresses }}

[upstream.sentinel]
addresses = {{ include "flagrelay.tomlStrings" $u.redis.sentinel.addresses }}
master_name = {{ $u.redis.sentinel.masterName | toString | toJson }}
{{- end }}
{{- end }}

[sse]
heartbeat_secs = {{ int $c.sse.heartbeatSecs }}
drain_window_secs = {{ int $c.sse.drainWindowSecs }}
{{- if gt (int $c.sse.maxConnectionAgeSecs) 0 }}
max_connection_age_secs = {{ int $c.sse.maxConnectionAgeSecs }}
{{- end }}
{{- include "flagrelay.tomlEntries" (dict "table" $c.sse.extra "prefix" "sse" "reserved" (list "heartbeat_secs" "drain_window_secs" "max_connection_age_secs")) }}
{{- with $c.http }}

[http]
{{- include "flagrelay.tomlEntries" (dict "table" . "prefix" "http" "subtables" true) }}
{{- end }}
{{- range $c.environments }}

[[environments]]
id = {{ .id | toString | toJson }}
server_keys = {{ include "flagrelay.tomlStrings" (.serverKeys | default list) }}
client_keys = {{ include "flagrelay.tomlStrings" (.clientKeys | default list) }}
{{- with .upstreamKey }}
upstream_key = {{ . | toString | toJson }}
{{- end }}
{{- end }}
{{ end }}

{{/* The flags file (file mode, inline flags). */}}
{{- define "flagrelay.flagsJson" -}}
{{- .Values.config.upstream.file.flags | default dict | toPrettyJson }}
{{- end }}

{{/*
Checksum of the rendered config and Redis URL, as a pod annotation value: a
change rolls the pods. The flags file is left out on purpose: the relay polls
it and streams changes to its clients live, so a flag edit must not restart
pods. Contents of existing Secrets are not seen.
*/}}
{{- define "flagrelay.configChecksum" -}}
{{- $parts := list .Values.mode }}
{{- if include "flagrelay.rendersConfigSecret" . }}
{{- $parts = append $parts (include "flagrelay.configToml" .) }}
{{- end }}
{{- if include "flagrelay.rendersRedisSecret" . }}
{{- $parts = append $parts (.Values.config.upstream.redis.url | toString) }}
{{- end }}
{{- join "\n---\n" $parts | sha256sum }}
{{- end }}

{{/*
Value checks; fails the render with a message naming the value to fix.
Included by templates/validate.yaml, so it runs in both modes.
*/}}
{{- define "flagrelay.validate" -}}
{{- $v := .Values }}
{{- $c := $v.config }}
{{- $u := $c.upstream }}
{{- if not (has $v.mode (list "deployment" "sidecar")) }}
{{- fail (printf "mode must be \"deployment\" or \"sidecar\", got %q" ($v.mode | toString)) }}
{{- end }}
{{- if not (has $u.kind (list "file" "redis" "relay")) }}
{{- fail (printf "config.upstream.kind must be \"file\", \"redis\" or \"relay\", got %q" ($u.kind | toString)) }}
{{- end }}
{{- if and (eq $u.kind "relay") (not (regexMatch "^https?://[^/@?#]+" (toString ($u.relay.url | default "")))) }}
{{- fail "config.upstream.kind is relay: set config.upstream.relay.url to the parent relay's API, e.g. http://flagrelay-central.flags.svc:7700" }}
{{- end }}
{{- if not (has $v.log.format (list "text" "json")) }}
{{- fail (printf "log.format must be \"text\" or \"json\", got %q" ($v.log.format | toString)) }}
{{- end }}
{{- if eq (int $v.ports.http) (int $v.ports.admin) }}
{{- fail "ports.http and ports.admin must differ" }}
{{- end }}
{{- if not (lt (int $c.sse.drainWindowSecs) (int $c.shutdownTimeoutSecs)) }}
{{- fail (printf "config.sse.drainWindowSecs (%d) must be smaller than config.shutdownTimeoutSecs (%d): the SSE drain has to finish inside the shutdown timeout" (int $c.sse.drainWindowSecs) (int $c.shutdownTimeoutSecs)) }}
{{- end }}
{{- $needed := add (int $v.lifecycle.preStopSleepSeconds) (int $c.shutdownTimeoutSecs) }}
{{- if and (eq $v.mode "deployment") (not (gt (int $v.terminationGracePeriodSeconds) $needed)) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be larger than lifecycle.preStopSleepSeconds + config.shutdownTimeoutSecs (%d), or the kubelet kills the relay mid-drain" (int $v.terminationGracePeriodSeconds) $needed) }}
{{- end }}
{{- if not $c.existingSecret }}
{{- if not $c.environments }}
{{- fail "config.environments is empty: list at least one environment (or set config.existingSecret)" }}
{{- end }}
{{- $ids := list }}
{{- $allKeys := list }}
{{- range $c.environments }}
{{- $id := toString (.id | default "") }}
{{- if not (regexMatch "^[A-Za-z0-9._-]+$" $id) }}
{{- fail (printf "config.environments: id %q: use letters, digits, '-', '_' or '.'" $id) }}
{{- end }}
{{- if has $id $ids }}
{{- fail (printf "config.environments: duplicate id %q" $id) }}
{{- end }}
{{- $ids = append $ids $id }}
{{- $envKeys := concat (.serverKeys | default list) (.clientKeys | default list) }}
{{- if not $envKeys }}
{{- fail (printf "config.environments: %q has no serverKeys or clientKeys; the relay needs at least one key per environment" $id) }}
{{- end }}
{{- range $envKeys }}
{{- $k := toString . }}
{{- if or (not $k) (regexMatch "\\s" $k) }}
{{- fail (printf "config.environments: %q has an empty key or a key with whitespace" $id) }}
{{- end }}
{{- if has $k $allKeys }}
{{- fail (printf "config.environments: %q repeats an SDK key already used (every key must be unique)" $id) }}
{{- end }}
{{- $allKeys = append $allKeys $k }}
{{- end }}
{{- end }}
{{- if and (eq $u.kind "file") (not $u.file.existingConfigMap) }}
{{- range $ids }}
{{- if not (hasKey ($u.file.flags | default dict) .) }}
{{- fail (printf "config.upstream.file.flags has no entry for environment %q: /readyz would never report ready" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if not (gt (int $c.sse.heartbeatSecs) 0) }}
{{- fail "config.sse.heartbeatSecs must be > 0" }}
{{- end }}
{{- if and (eq $u.kind "file") (not (gt (int $u.file.pollIntervalMs) 0)) }}
{{- fail "config.upstream.file.pollIntervalMs must be > 0" }}
{{- end }}
{{- if and (eq $u.kind "redis") $u.redis.url (not $u.redis.existingSecret) (not (regexMatch "^(redis|rediss|redis\\+unix|unix)://" (toString $u.redis.url))) }}
{{- fail "config.upstream.redis.url must be a redis://, rediss://, redis+unix:// or unix:// URL" }}
{{- end }}
{{- if and (eq $u.kind "redis") (or (not $u.redis.prefix) (regexMatch "[{} ]" (toString $u.redis.prefix))) }}
{{- fail "config.upstream.redis.prefix must be non-empty, without braces or spaces" }}
{{- end }}
{{- if and (eq $u.kind "redis") (not $u.redis.url) (not $u.redis.existingSecret) }}
{{- fail "config.upstream.kind is redis: set config.upstream.redis.url or config.upstream.redis.existingSecret" }}
{{- end }}
{{- if and $u.redis.sentinel.addresses (not $u.redis.sentinel.masterName) }}
{{- fail "config.upstream.redis.sentinel.addresses is set: set config.upstream.redis.sentinel.masterName too" }}
{{- end }}
{{- if and $u.redis.cluster.enabled $u.redis.sentinel.addresses }}
{{- fail "config.upstream.redis.cluster.enabled cannot be combined with config.upstream.redis.sentinel.addresses: a cluster finds its primaries itself (set one of them)" }}
{{- end }}
{{- if and $u.redis.cluster.seeds (not $u.redis.cluster.enabled) }}
{{- fail "config.upstream.redis.cluster.seeds is set: set config.upstream.redis.cluster.enabled too (seeds are for Redis Cluster only)" }}
{{- end }}
{{- if and (eq $u.kind "redis") $u.redis.cluster.enabled $u.redis.url (not $u.redis.existingSecret) (not (regexMatch "^rediss?://" (toString $u.redis.url))) }}
{{- fail "config.upstream.redis.cluster.enabled needs a redis:// or rediss:// URL (a cluster is not reached over a unix socket)" }}
{{- end }}
{{- $scheme := ternary "rediss://" "redis://" (hasPrefix "rediss://" (toString $u.redis.url)) }}
{{- range $u.redis.cluster.seeds }}
{{- $seed := toString . }}
{{- if not (regexMatch "^(rediss?://([^\\s/@]*@)?)?(\\[[0-9A-Fa-f:.]+\\]|[^\\s/:@\\[\\]]+):[0-9]+(/\\S*)?$" $seed) }}
{{- fail (printf "config.upstream.redis.cluster.seeds: %q is not host:port (or a redis:// / rediss:// URL of one)" (regexReplaceAll "^(.*://)[^@/]*@" $seed "${1}")) }}
{{- end }}
{{- if and $u.redis.url (not $u.redis.existingSecret) (contains "://" $seed) (not (hasPrefix $scheme $seed)) }}
{{- fail (printf "config.upstream.redis.cluster.seeds: every seed URL uses the scheme of config.upstream.redis.url (%s)" $scheme) }}
{{- end }}
{{- end }}
{{- if eq $v.mode "sidecar" }}
{{- range $key := list "autoscaling" "podDisruptionBudget" "serviceMonitor" }}
{{- if (index $v $key).enabled }}
{{- fail (printf "%s.enabled applies to deployment mode only; in sidecar mode the application's chart owns the pods" $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and $v.serviceMonitor.enabled (not $v.service.exposeAdmin) }}
{{- fail "serviceMonitor.enabled needs service.exposeAdmin: the ServiceMonitor scrapes the Service's admin port" }}
{{- end }}
{{- end }}

{{/*
The relay container. Takes (dict "ctx" <chart context> "sidecar" <bool>).
Deployment mode: the Deployment's container. Sidecar mode: a native sidecar
(restartPolicy: Always) for an application pod's initContainers.
*/}}
{{- define "flagrelay.container" -}}
{{- $ctx := .ctx -}}
{{- $sidecar := .sidecar -}}
{{- $v := $ctx.Values -}}
{{- $adminPort := int $v.ports.admin -}}
name: {{ if $sidecar }}{{ $v.sidecar.name }}{{ else }}{{ include "flagrelay.name" $ctx }}{{ end }}
image: {{ include "flagrelay.image" $ctx | quote }}
imagePullPolicy: {{ $v.image.pullPolicy }}
{{- if $sidecar }}
restartPolicy: Always
{{- end }}
args:
  - serve
  {{- range $v.extraArgs }}
  - {{ . | toString | quote }}
  {{- end }}
env:
  - name: FLAGRELAY_CONFIG
    value: {{ include "flagrelay.configPath" $ctx | quote }}
  - name: FLAGRELAY_LISTEN
    value: {{ include "flagrelay.hostPort" (list (ternary $v.sidecar.listenHost $v.listenHost $sidecar) $v.ports.http) | quote }}
  - name: FLAGRELAY_ADMIN_LISTEN
    value: {{ include "flagrelay.hostPort" (list (ternary $v.sidecar.adminListenHost $v.listenHost $sidecar) $v.ports.admin) | quote }}
  - name: FLAGRELAY_LOG_LEVEL
    value: {{ $v.log.level | toString | quote }}
  - name: FLAGRELAY_LOG_FORMAT
    value: {{ $v.log.format | toString | quote }}
  {{- if eq $v.config.upstream.kind "redis" }}
  - name: FLAGRELAY_REDIS_URL
    valueFrom:
      secretKeyRef:
        name: {{ include "flagrelay.redisSecretName" $ctx }}
        key: {{ include "flagrelay.redisSecretKey" $ctx }}
  {{- end }}
  {{- with $v.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
ports:
  {{- if not $sidecar }}
  - name: http
    containerPort: {{ int $v.ports.http }}
    protocol: TCP
  {{- end }}
  - name: {{ if $sidecar }}flagrelay-admin{{ else }}admin{{ end }}
    containerPort: {{ $adminPort }}
    protocol: TCP
{{- if $sidecar }}
startupProbe:
  httpGet:
    path: {{ $v.sidecar.startupProbe.path }}
    port: {{ $adminPort }}
  {{- toYaml (omit $v.sidecar.startupProbe "path") | nindent 2 }}
{{- else if $v.startupProbe.enabled }}
startupProbe:
  httpGet:
    path: /healthz
    port: {{ $adminPort }}
  {{- toYaml (omit $v.startupProbe "enabled") | nindent 2 }}
{{- end }}
{{- if $v.livenessProbe.enabled }}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ $adminPort }}
  {{- toYaml (omit $v.livenessProbe "enabled") | nindent 2 }}
{{- end }}
{{- if $v.readinessProbe.enabled }}
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ $adminPort }}
  {{- toYaml (omit $v.readinessProbe "enabled") | nindent 2 }}
{{- end }}
{{- if and (not $sidecar) (gt (int $v.lifecycle.preStopSleepSeconds) 0) }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ int $v.lifecycle.preStopSleepSeconds }}
{{- end }}
resources:
  {{- toYaml (ternary $v.sidecar.resources $v.resources $sidecar) | nindent 2 }}
securityContext:
  {{- toYaml $v.securityContext | nindent 2 }}
volumeMounts:
  - name: flagrelay-config
    mountPath: {{ include "flagrelay.configDir" $ctx }}
    readOnly: true
  {{- if eq $v.config.upstream.kind "file" }}
  - name: flagrelay-flags
    mountPath: {{ include "flagrelay.flagsDir" $ctx }}
    readOnly: true
  {{- end }}
  - name: flagrelay-tmp
    mountPath: /tmp
  {{- with $v.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* The pod volumes the relay container mounts (list items). */}}
{{- define "flagrelay.volumes" -}}
- name: flagrelay-config
  secret:
    secretName: {{ include "flagrelay.configSecretName" . }}
    items:
      - key: {{ include "flagrelay.configSecretKey" . }}
        path: flagrelay.toml
{{- if eq .Values.config.upstream.kind "file" }}
- name: flagrelay-flags
  configMap:
    name: {{ include "flagrelay.flagsConfigMapName" . }}
    items:
      - key: {{ include "flagrelay.flagsConfigMapKey" . }}
        path: flags.json
{{- end }}
- name: flagrelay-tmp
  emptyDir:
    sizeLimit: 16Mi
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}
