//! TLS fixtures for the `--web.config.file` tests, all made by tools nobody here wrote: a CA with
//! server and client certificates from the `openssl` CLI, bcrypt hashes from `htpasswd` (Debian's
//! apache2-utils), and the TLS clients `curl` and `openssl s_client`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use super::{have_program, run, run_ok, TempDir};

/// Panics naming the Debian package unless `program` is on PATH.
pub fn need(program: &str, package: &str) {
    assert!(
        have_program(program),
        "{program} not found: install the Debian package {package} (cargo xtask setup does)"
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    run_ok(Command::new("openssl").args(args).current_dir(dir));
}

/// A test PKI in a temp dir: `ca.crt`, a server certificate for 127.0.0.1 and localhost, a client
/// certificate (SAN `DNS:prometheus`) signed by the CA, and a client certificate from another CA.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        need("openssl", "openssl");
        let pki = Pki { dir: TempDir::new("cmpki") };
        pki.ca("ca", "connmon-test-ca");
        pki.ca("rogue-ca", "connmon-rogue-ca");
        pki.issue("server", "ca", "connmon-server-1", 1001, "server");
        pki.issue("client", "ca", "prometheus", 2001, "client");
        pki.issue("rogue-client", "rogue-ca", "prometheus", 3001, "client");
        pki
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `name` in the PKI's directory, as a string for command lines and config files.
    pub fn path(&self, name: &str) -> String {
        self.dir().join(name).display().to_string()
    }

    fn ca(&self, stem: &str, cn: &str) {
        let (key, crt) = (format!("{stem}.key"), format!("{stem}.crt"));
        openssl(
            self.dir(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &crt,
                "-days",
                "2",
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
    }

    /// Issues `stem.crt`/`stem.key` signed by `ca`: `role` "server" (SAN 127.0.0.1 and localhost,
    /// EC P-256 key) or "client" (SAN DNS:`cn`); "server-rsa" is a server certificate with an RSA key.
    pub fn issue(&self, stem: &str, ca: &str, cn: &str, serial: u32, role: &str) {
        let (san, usage) = match role {
            "client" => (format!("DNS:{cn}"), "clientAuth"),
            _ => ("IP:127.0.0.1,DNS:localhost".to_string(), "serverAuth"),
        };
        let ext = format!("{stem}.ext");
        std::fs::write(
            self.dir().join(&ext),
            format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"),
        )
        .expect("write openssl extension file");
        let (key, csr, crt) = (format!("{stem}.key"), format!("{stem}.csr"), format!("{stem}.crt"));
        let newkey: &[&str] = if role == "server-rsa" {
            &["-newkey", "rsa:2048"]
        } else {
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        };
        let mut req = vec!["req"];
        req.extend_from_slice(newkey);
        let subj = format!("/CN={cn}");
        req.extend_from_slice(&["-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(self.dir(), &req);
        let serial = serial.to_string();
        let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
        openssl(
            self.dir(),
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_crt,
                "-CAkey",
                &ca_key,
                "-set_serial",
                &serial,
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
        );
    }
}

/// A bcrypt hash (cost 10) of `password`, from `htpasswd -nbBC 10`.
pub fn bcrypt_hash(password: &str) -> String {
    need("htpasswd", "apache2-utils");
    let out = run_ok(Command::new("htpasswd").args(["-nbBC", "10", "", password]));
    let hash = out.trim().trim_start_matches(':').to_string();
    assert!(hash.starts_with("$2y$10$") && hash.len() == 60, "htpasswd printed {out:?}");
    hash
}

/// What `curl` did: its exit code (0 = HTTP exchange done), the status and the response.
#[derive(Debug)]
pub struct Curl {
    pub exit: i32,
    pub status: u16,
    /// Response headers, lower-cased names.
    pub headers: String,
    pub body: String,
    pub stderr: String,
}

impl Curl {
    /// Panics (showing everything) unless curl got an HTTP answer with `status`.
    pub fn expect_status(&self, status: u16, what: &str) -> &Curl {
        assert!(self.exit == 0 && self.status == status, "{what}: want HTTP {status}, got {self:#?}");
        self
    }

    /// Panics unless curl failed before any HTTP answer (TLS refused, not TLS, …).
    pub fn expect_refused(&self, what: &str) -> &Curl {
        assert!(self.exit != 0 && self.status == 0, "{what}: want no HTTP answer, got {self:#?}");
        self
    }
}

/// `curl -sS <args> URL`, 20 s at most, headers and body captured.
pub fn curl(args: &[&str], url: &str) -> Curl {
    need("curl", "curl");
    let dir = TempDir::new("cmcurl");
    let (headers, body) = (dir.path().join("headers"), dir.path().join("body"));
    let out = run(Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "%{http_code}", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(args)
        .arg(url));
    let stdout = String::from_utf8_lossy(&out.stdout);
    Curl {
        exit: out.status.code().unwrap_or(-1),
        status: stdout.trim().parse().unwrap_or(0),
        headers: std::fs::read_to_string(&headers).unwrap_or_default().to_ascii_lowercase(),
        body: std::fs::read_to_string(&body).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// `https://ADDR/PATH`.
pub fn https(addr: SocketAddr, path: &str) -> String {
    format!("https://{addr}{path}")
}

/// Serial and subject of the certificate a new TLS connection to `addr` is served
/// (`openssl s_client`, then `openssl x509 -noout -serial -subject`); `Err` if none.
pub fn served_certificate(addr: SocketAddr) -> Result<String, String> {
    let dir = TempDir::new("cmsclient");
    let pem = dir.path().join("served.pem");
    let out = run(Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-servername", "localhost"])
        .stdin(std::process::Stdio::null()));
    let text = String::from_utf8_lossy(&out.stdout);
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .ok_or_else(|| format!("no certificate from {addr}: {}", String::from_utf8_lossy(&out.stderr)))?;
    let end =
        text.find("-----END CERTIFICATE-----").ok_or("truncated certificate")? + "-----END CERTIFICATE-----".len();
    std::fs::write(&pem, &text[begin..end]).expect("write served.pem");
    let info = run(Command::new("openssl").args(["x509", "-noout", "-serial", "-subject", "-in"]).arg(&pem));
    Ok(String::from_utf8_lossy(&info.stdout).trim().to_string())
}
