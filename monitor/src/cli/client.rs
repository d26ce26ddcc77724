//! How the CLI talks to a running agent (`connmon alerts --agent`, `connmon top --agent`): the
//! agent's URL and an optional client configuration in the format of Prometheus' `http_config`
//! (the file `promtool --http.config.file` reads), so the file that lets Prometheus scrape an
//! agent behind `--web.config.file` lets the CLI in too. Only what a client of that server needs
//! is accepted: basic auth (password or password_file), a CA, a client certificate and key, and
//! insecure_skip_verify; anything else is a one-line error naming the key.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, Context as _};
use base64::Engine as _;
use clap::Args;
use serde::Deserialize;

/// Where the agent is and how to authenticate to it.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The agent's address, http:// or https:// (connmon alerts: default http://127.0.0.1:9977;
    /// connmon top: without it, top attaches the probes itself).
    #[arg(long, value_name = "URL")]
    pub agent: Option<String>,
    /// Client TLS and basic auth for --agent, in Prometheus' http_config format (the file of
    /// promtool's --http.config.file): basic_auth {username, password | password_file} and
    /// tls_config {ca_file, cert_file, key_file, insecure_skip_verify}.
    #[arg(long = "http.config.file", value_name = "FILE")]
    pub http_config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    basic_auth: Option<RawBasicAuth>,
    tls_config: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasicAuth {
    username: String,
    password: Option<String>,
    password_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

/// A ready HTTP client for one agent.
pub struct AgentClient {
    base: String,
    agent: ureq::Agent,
    authorization: Option<String>,
}

impl AgentClient {
    /// Builds the client `url` and the optional config file describe; every problem is one line.
    pub fn new(url: &str, config: Option<&Path>) -> anyhow::Result<Self> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!("--agent {url:?}: give an http:// or https:// URL, e.g. http://127.0.0.1:9977");
        }
        let mut builder = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10)));
        let mut authorization = None;
        if let Some(path) = config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --http.config.file {}", path.display()))?;
            let dir = path.parent().unwrap_or(Path::new("."));
            let raw: RawConfig = if text.trim().is_empty() {
                RawConfig::default()
            } else {
                serde_saphyr::from_str(&text)
                    .map_err(|e| anyhow!("--http.config.file {}: {}", path.display(), first_line(&e)))?
            };
            if let Some(b) = raw.basic_auth {
                let password = match (b.password, b.password_file) {
                    (Some(p), None) => p,
                    (None, Some(f)) => read(dir, &f, "basic_auth.password_file")?.trim_end_matches(['\r', '\n']).into(),
                    (None, None) => String::new(),
                    (Some(_), Some(_)) => {
                        anyhow::bail!(
                            "--http.config.file {}: give basic_auth.password or password_file, not both",
                            path.display()
                        )
                    }
                };
                let token = base64::engine::general_purpose::STANDARD.encode(format!("{}:{password}", b.username));
                authorization = Some(format!("Basic {token}"));
            }
            if let Some(t) = raw.tls_config {
                builder = builder
                    .tls_config(tls(dir, &t).map_err(|e| anyhow!("--http.config.file {}: {e:#}", path.display()))?);
            }
        }
        Ok(Self { base, agent: ureq::Agent::new_with_config(builder.build()), authorization })
    }

    /// From the command line's `--agent` and `--http.config.file`, with `default` as the URL.
    pub fn from_args(args: &AgentArgs, default: &str) -> anyhow::Result<Self> {
        Self::new(args.agent.as_deref().unwrap_or(default), args.http_config.as_deref())
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The body of GET `path` as text; a refusal or an HTTP error is one line naming the URL.
    pub fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.get(&url);
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        let hint = match () {
            _ if self.authorization.is_none() => " (is `connmon run` serving there? if it needs a password or a client certificate, see --http.config.file)",
            _ => " (is `connmon run` serving there? see --agent and --http.config.file)",
        };
        let mut resp = req.call().map_err(|e| anyhow!("cannot read {url}: {e}{hint}"))?;
        resp.body_mut().with_config().limit(64 << 20).read_to_string().map_err(|e| anyhow!("cannot read {url}: {e}"))
    }

    /// GET `path` parsed as JSON.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let text = self.get_text(path)?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow!("{}{path} answered something that is not its JSON: {e}", self.base))
    }
}

fn first_line(e: &impl std::fmt::Display) -> String {
    let s = e.to_string();
    s.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string()
}

fn read(dir: &Path, file: &str, key: &str) -> anyhow::Result<String> {
    let p = dir.join(file);
    std::fs::read_to_string(&p).with_context(|| format!("{key}: cannot read {}", p.display()))
}

fn tls(dir: &Path, t: &RawTls) -> anyhow::Result<ureq::tls::TlsConfig> {
    use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
    let mut b = TlsConfig::builder().disable_verification(t.insecure_skip_verify);
    if let Some(ca) = &t.ca_file {
        let pem = read(dir, ca, "tls_config.ca_file")?;
        let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(pem.as_bytes())
            .filter_map(|i| match i {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            anyhow::bail!("tls_config.ca_file {ca}: no PEM certificate in it");
        }
        b = b.root_certs(RootCerts::new_with_certs(&certs));
    }
    match (&t.cert_file, &t.key_file) {
        (Some(c), Some(k)) => {
            let pem = read(dir, c, "tls_config.cert_file")?;
            let chain: Vec<Certificate<'static>> = ureq::tls::parse_pem(pem.as_bytes())
                .filter_map(|i| match i {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if chain.is_empty() {
                anyhow::bail!("tls_config.cert_file {c}: no PEM certificate in it");
            }
            let key = PrivateKey::from_pem(read(dir, k, "tls_config.key_file")?.as_bytes())
                .map_err(|e| anyhow!("tls_config.key_file {k}: {e}"))?;
            b = b.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        (None, None) => {}
        _ => anyhow::bail!("tls_config: give cert_file and key_file together"),
    }
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn bad_files_are_one_line_errors() {
        let dir = std::env::temp_dir().join(format!("connmon-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let unknown = write(&dir, "unknown.yml", "bearer_token: x\n");
        let e = AgentClient::new("http://127.0.0.1:1", Some(&unknown)).err().unwrap().to_string();
        assert!(e.contains("bearer_token") && !e.contains('\n'), "{e}");
        let both = write(&dir, "both.yml", "basic_auth: {username: a, password: b, password_file: c}\n");
        let e = AgentClient::new("http://127.0.0.1:1", Some(&both)).err().unwrap().to_string();
        assert!(e.contains("not both"), "{e}");
        let half = write(&dir, "half.yml", "tls_config: {cert_file: c.pem}\n");
        let e = AgentClient::new("https://127.0.0.1:1", Some(&half)).err().unwrap().to_string();
        assert!(e.contains("cert_file and key_file together"), "{e}");
        let e = AgentClient::new("127.0.0.1:9977", None).err().unwrap().to_string();
        assert!(e.contains("http://"), "{e}");
        let pw = write(&dir, "pw", "s3cret\n");
        let ok = write(&dir, "ok.yml", &format!("basic_auth:\n  username: prom\n  password_file: {}\n", pw.display()));
        let c = AgentClient::new("http://127.0.0.1:1/", Some(&ok)).unwrap();
        assert_eq!(c.base(), "http://127.0.0.1:1");
        let want = base64::engine::general_purpose::STANDARD.encode("prom:s3cret");
        assert_eq!(c.authorization.as_deref(), Some(format!("Basic {want}").as_str()));
        std::fs::remove_dir_all(&dir).ok();
    }
}
