//! Service classes of destinations: which pools are Redis/KeyDB, PostgreSQL/PgBouncer or other.
//! Well-known ports by default, overridable per service on the command line; a protocol seen on
//! the wire (when the kernel lets connmon read it) wins over the port.
use std::collections::BTreeMap;

use anyhow::{anyhow, bail};

pub const REDIS: &str = "redis";
pub const POSTGRES: &str = "postgres";
pub const OTHER: &str = "other";

/// How a pool's service was decided, as the `classified_by` label says.
pub const BY_PROTOCOL: &str = "protocol";
pub const BY_PORT: &str = "port";
pub const BY_NOTHING: &str = "none";

#[derive(Debug, Clone)]
pub struct Services {
    by_port: BTreeMap<u16, String>,
}

impl Default for Services {
    fn default() -> Self {
        let mut by_port = BTreeMap::new();
        // 6379 Redis/KeyDB, 6380 the usual second instance or TLS port, 26379 Sentinel.
        for p in [6379, 6380, 26379] {
            by_port.insert(p, REDIS.to_string());
        }
        // 5432 PostgreSQL, 6432 PgBouncer.
        for p in [5432, 6432] {
            by_port.insert(p, POSTGRES.to_string());
        }
        Self { by_port }
    }
}

impl Services {
    /// Defaults plus overrides of the form `NAME=PORT[,PORT...]` (a port given twice: last wins).
    pub fn with_overrides(specs: &[String]) -> anyhow::Result<Self> {
        let mut s = Self::default();
        for spec in specs {
            let (name, ports) = parse_override(spec)?;
            for p in ports {
                s.by_port.insert(p, name.clone());
            }
        }
        Ok(s)
    }

    /// The service class of a destination and how it was decided.
    pub fn classify(&self, port: u16, protocol: Option<&str>) -> (String, &'static str) {
        if let Some(p) = protocol {
            return (p.to_string(), BY_PROTOCOL);
        }
        match self.by_port.get(&port) {
            Some(name) => (name.clone(), BY_PORT),
            None => (OTHER.to_string(), BY_NOTHING),
        }
    }
}

/// Pure: `redis=6379,7000` -> ("redis", [6379, 7000]).
pub fn parse_override(spec: &str) -> anyhow::Result<(String, Vec<u16>)> {
    let bad = |why: &str| anyhow!("invalid --service {spec:?}: {why}; expected NAME=PORT[,PORT...], e.g. redis=7000");
    let (name, ports) = spec.split_once('=').ok_or_else(|| bad("no '='"))?;
    let name = name.trim();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(bad("the name must be letters, digits, '_' or '-'"));
    }
    let ports: Vec<u16> = ports
        .split(',')
        .map(|p| p.trim().parse::<u16>().ok().filter(|&p| p != 0))
        .collect::<Option<_>>()
        .ok_or_else(|| bad("ports must be numbers from 1 to 65535"))?;
    if ports.is_empty() {
        bail!(bad("no ports"));
    }
    Ok((name.to_string(), ports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let s = Services::with_overrides(&["redis=7000".into(), "postgres=6379".into()]).unwrap();
        assert_eq!(s.classify(7000, None), ("redis".into(), BY_PORT));
        assert_eq!(s.classify(6379, None), ("postgres".into(), BY_PORT));
        assert_eq!(s.classify(5432, None), ("postgres".into(), BY_PORT));
        assert_eq!(s.classify(9999, None), ("other".into(), BY_NOTHING));
        assert_eq!(s.classify(9999, Some("redis")), ("redis".into(), BY_PROTOCOL));
    }

    #[test]
    fn bad_overrides_name_the_flag() {
        for bad in ["redis", "=1", "redis=", "redis=0", "redis=70000", "re dis=1", "redis=a"] {
            let e = parse_override(bad).unwrap_err().to_string();
            assert!(e.contains("--service"), "{bad}: {e}");
        }
    }
}
