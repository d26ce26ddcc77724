//! Unix-domain listeners (issue 12): stream listeners on a path and on an abstract name, in the
//! host's namespace and in a test namespace, each with connections nobody accepts. `connmon
//! listeners --json` and the agent's metrics must show the depth and backlog `ss -xl` shows, with
//! family "unix", the path (or `@name`) and the owning process. Also a unix server under
//! overload: its queue wait from Little's law (the `sk_data_ready` probe counts unix enqueues too)
//! against the clients' own times. Needs root.

use connmon_test_support as common;

use std::os::unix::net::UnixStream;

use serde_json::Value;

use common::*;

/// `n` connections to `name` (a path, or `@abstract`), made in `ns`; they stay open (and queued).
fn connect_n(ns: &Netns, name: &str, n: usize) -> Vec<UnixStream> {
    let name = name.to_string();
    ns.run(move || {
        (0..n)
            .map(|_| match name.strip_prefix('@') {
                Some(abs) => {
                    use std::os::linux::net::SocketAddrExt as _;
                    let a = std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes()).unwrap();
                    UnixStream::connect_addr(&a).unwrap_or_else(|e| panic!("connect @{abs}: {e}"))
                }
                None => UnixStream::connect(&name).unwrap_or_else(|e| panic!("connect {name}: {e}")),
            })
            .collect()
    })
}

fn unix_row<'a>(rows: &'a [Value], netns: u64, path: &str) -> &'a Value {
    let hits: Vec<&Value> =
        rows.iter().filter(|r| r["netns"].as_u64() == Some(netns) && r["path"].as_str() == Some(path)).collect();
    assert_eq!(hits.len(), 1, "one unix listener {path} in netns {netns}; rows: {rows:#?}");
    hits[0]
}

#[test]
fn unix_listeners_match_ss_in_the_host_and_a_namespace() {
    let dir = TempDir::new("connmon-unix");
    let ns = Netns::new();
    let host = Netns::host();
    let tag = unique_name("cm");
    let path = dir.path().join("app.sock").display().to_string();
    let abstract_host = format!("@{tag}-host");
    let abstract_ns = format!("@{tag}-ns");
    // Nobody accepts (0 workers): what connects stays queued.
    let servers = [
        (PreforkServer::start(&host, &path, 0, 7, 0, 0), &host, path.clone(), 3),
        (PreforkServer::start(&host, &abstract_host, 0, 16, 0, 0), &host, abstract_host.clone(), 5),
        (PreforkServer::start(&ns, &abstract_ns, 0, 4, 0, 0), &ns, abstract_ns.clone(), 2),
    ];
    let _clients: Vec<Vec<UnixStream>> = servers.iter().map(|(_, ns, name, n)| connect_n(ns, name, *n)).collect();

    let agent = Agent::start(&[]);
    let rows = connmon_listeners_json(&[]);
    let s = agent.wait_metrics(deadline(20), "the unix listeners in the metrics", |s| {
        let ino = ns.inode().to_string();
        match sample(
            s,
            "connmon_listen_queue_depth",
            &[("netns", ino.as_str()), ("family", "unix"), ("addr", abstract_ns.as_str())],
        ) {
            Some(_) => Ok(s.to_vec()),
            None => Err("not yet".to_string()),
        }
    });
    for (server, where_, name, n) in &servers {
        let ss: Vec<SsUnixListener> = ss_unix_listeners(where_).into_iter().filter(|l| l.name == *name).collect();
        assert_eq!(ss.len(), 1, "ss -xl shows {name} once: {ss:?}");
        let ss = &ss[0];
        assert_eq!(ss.recv_q, *n as u64, "test setup: {n} connections queued on {name}");
        let row = unix_row(&rows, where_.inode(), name);
        let got = (
            json_str(row, "family"),
            json_str(row, "kind"),
            json_u64(row, "depth"),
            json_u64(row, "backlog"),
            json_u64(row, "pid"),
        );
        assert_eq!(
            got,
            ("unix", "stream", ss.recv_q, ss.send_q, u64::from(server.pid())),
            "connmon listeners for {name}: {row}"
        );
        let ino = where_.inode().to_string();
        let labels = [("netns", ino.as_str()), ("family", "unix"), ("addr", name.as_str()), ("port", "")];
        assert_eq!(sample(&s, "connmon_listen_queue_depth", &labels), Some(ss.recv_q as f64), "{name}");
        assert_eq!(sample(&s, "connmon_listen_queue_max", &labels), Some(ss.send_q as f64), "{name}");
        // A unix listener that never accepts, with connections queued: they wait for ever.
        assert_eq!(
            sample(&s, "connmon_listen_backlog_requested", &labels),
            None,
            "listen() ran before the agent attached"
        );
    }
    // The table shows them too.
    let table = connmon_ok(&["listeners"]);
    assert!(table.lines().any(|l| l.contains(&abstract_host) && l.contains(" unix ")), "{table}");
}

#[test]
fn a_unix_server_behind_its_queue_gets_a_queue_wait_and_the_alert() {
    let agent = Agent::start(&[]);
    let dir = TempDir::new("connmon-unix-slow");
    let path = dir.path().join("uwsgi.sock").display().to_string();
    let host = Netns::host();
    // One worker, 200 ms a request: 5 accepts/s; listen() ran while the agent was attached.
    let _server = PreforkServer::start(&host, &path, 0, 64, 1, 200);
    let ino = host.inode().to_string();
    let labels = [("netns", ino.as_str()), ("family", "unix"), ("addr", path.as_str())];
    assert_eq!(
        agent.wait_metrics(deadline(10), "the requested backlog", |s| sample(
            s,
            "connmon_listen_backlog_requested",
            &labels
        )
        .ok_or_else(|| "absent".to_string())),
        64.0
    );
    // 10 patient clients: ~9 queued behind one worker, about 1.8 s each.
    let clients = TimeoutClients::start(&host, &path, 0, 10, 30_000, 60);
    let wait = agent.wait_metrics(deadline(30), "a Little's-law wait above 1 s", |s| {
        match sample(
            s,
            "connmon_listen_queue_wait_seconds",
            &[labels[0], labels[1], labels[2], ("method", "littles_law")],
        ) {
            Some(w) if w > 1.0 => Ok(w),
            other => Err(format!("{other:?}")),
        }
    });
    eprintln!("unix listener, 10 patient clients at 5 accepts/s: Little's-law wait {wait:.2}s");
    alert_views::wait_agent_firing(&agent, deadline(40), "AcceptQueueSlowFailure", &labels);
    drop(clients);
}
