//! End to end: a real Prometheus loads the real rules (with `for:` shortened), scrapes a fixture
//! `/metrics` endpoint served here or the real exporter, and alerts reach `firing` (or stay
//! silent) in `/api/v1/alerts`.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use virtguard_e2e::{
    free_port, require_binary, require_peer, wait_for_port, workspace_bin, Prometheus,
    PrometheusConfig,
};
use virtguard_exporter::catalog;

use crate::rules::{rule_files, yaml};

/// A `/metrics` endpoint on 127.0.0.1 serving [`fixture_metrics`] for the n-th scrape.
struct FixtureExporter {
    port: u16,
    scrapes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FixtureExporter {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fixture exporter");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("bound address").port();
        let scrapes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (scrapes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let n = s.fetch_add(1, Ordering::Relaxed);
                        let _ = serve(conn, n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("fixture exporter: accept failed: {e}"),
                }
            }
        });
        Self {
            port,
            scrapes,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FixtureExporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, n: u64) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let k = conn.read(&mut buf)?;
        if k == 0 {
            break;
        }
        req.extend_from_slice(&buf[..k]);
    }
    let body = fixture_metrics(n);
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

/// Exposition text for the n-th scrape, with HELP/TYPE taken from the catalogue (so the fixture
/// can only expose catalogued metrics). Per scrape, prod/db-1's rootdisk completes 10 reads
/// taking 5 s in total (500 ms each: above the 100 ms threshold) and its filesystems are frozen;
/// prod/web-1 reads at 1 ms and is not frozen.
fn fixture_metrics(n: u64) -> String {
    let series: &[(&str, &str, f64)] = &[
        (
            "virtguard_vmi_filesystem_frozen",
            r#"namespace="prod",name="db-1",node="worker-1""#,
            1.0,
        ),
        (
            "virtguard_vmi_filesystem_frozen",
            r#"namespace="prod",name="web-1",node="worker-1""#,
            0.0,
        ),
        (
            "kubevirt_vmi_storage_iops_read_total",
            r#"namespace="prod",name="db-1",node="worker-1",drive="rootdisk""#,
            10.0 * n as f64,
        ),
        (
            "kubevirt_vmi_storage_iops_read_total",
            r#"namespace="prod",name="web-1",node="worker-1",drive="rootdisk""#,
            10.0 * n as f64,
        ),
        (
            "kubevirt_vmi_storage_read_times_seconds_total",
            r#"namespace="prod",name="db-1",node="worker-1",drive="rootdisk""#,
            5.0 * n as f64,
        ),
        (
            "kubevirt_vmi_storage_read_times_seconds_total",
            r#"namespace="prod",name="web-1",node="worker-1",drive="rootdisk""#,
            0.01 * n as f64,
        ),
    ];
    let mut out = String::new();
    let mut last = "";
    for (name, labels, value) in series {
        if *name != last {
            let def = catalog::get(name).unwrap_or_else(|| panic!("{name} is not catalogued"));
            out.push_str(&format!(
                "# HELP {name} {}\n# TYPE {name} {}\n",
                def.help,
                def.kind.as_str()
            ));
            last = name;
        }
        out.push_str(&format!("{name}{{{labels}}} {value}\n"));
    }
    out
}

/// The real rules with every `for:` shortened to 1s, so that alerts whose expression holds fire
/// within seconds. Expressions, labels and annotations are unchanged.
fn rules_with_short_for(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for f in rule_files() {
        let mut doc = yaml(&f);
        let groups = doc["groups"].as_sequence_mut().expect("a groups list");
        for g in groups {
            for r in g["rules"].as_sequence_mut().expect("a rules list") {
                if let Some(m) = r.as_mapping_mut() {
                    if m.contains_key("for") {
                        m.insert("for".into(), "1s".into());
                    }
                }
            }
        }
        let p = dir.join(f.file_name().expect("a file name"));
        let text = serde_yaml::to_string(&doc).expect("rendering YAML");
        std::fs::write(&p, text).expect("writing the test rule file");
        out.push(p);
    }
    out
}

fn alert_for<'a>(
    alerts: &'a serde_json::Value,
    name: &str,
    vm: &str,
) -> Vec<&'a serde_json::Value> {
    alerts
        .as_array()
        .expect("/api/v1/alerts returns a list")
        .iter()
        .filter(|a| a["labels"]["alertname"] == name && a["labels"]["name"] == vm)
        .collect()
}

#[test]
fn alerts_fire_in_a_real_prometheus_scraping_a_fixture_exporter() {
    require_peer!(require_binary("prometheus"));
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_with_short_for(dir.path());
    let fixture = FixtureExporter::start();
    let prom = require_peer!(Prometheus::start(&PrometheusConfig {
        targets: vec![format!("127.0.0.1:{}", fixture.port)],
        interval: Duration::from_secs(1),
        rule_files: rules,
        ..Default::default()
    }));

    let timeout = Duration::from_secs(45);
    let frozen = prom
        .wait_for_alert("VirtguardVMIFilesystemFrozen", "firing", timeout)
        .unwrap();
    assert_eq!(frozen["labels"]["namespace"], "prod");
    assert_eq!(frozen["labels"]["name"], "db-1");
    assert_eq!(frozen["labels"]["severity"], "critical");
    assert_eq!(frozen["labels"]["component"], "guest");
    let desc = frozen["annotations"]["description"].as_str().unwrap();
    assert!(desc.contains("VM prod/db-1 "), "{desc}");
    assert!(desc.contains("(frozen = 1)"), "{desc}");
    assert!(frozen["annotations"]["runbook_url"]
        .as_str()
        .unwrap()
        .ends_with("/runbooks/VirtguardVMIFilesystemFrozen.md"));

    // A rate()-based rule needs two scrapes of the counters first.
    let slow = prom
        .wait_for_alert("VirtguardVMIStorageReadLatencyHigh", "firing", timeout)
        .unwrap();
    assert_eq!(slow["labels"]["name"], "db-1");
    assert_eq!(slow["labels"]["drive"], "rootdisk");
    let value: f64 = slow["value"].as_str().unwrap().parse().unwrap();
    assert!(
        (value - 0.5).abs() < 0.01,
        "read latency {value}, want 0.5s"
    );
    let desc = slow["annotations"]["description"].as_str().unwrap();
    assert!(
        desc.contains("VM prod/db-1 (node worker-1) have taken 500ms"),
        "{desc}"
    );

    // The healthy VM stays silent, and so does the exporter-health rule (the target is up).
    let all = prom.alerts().unwrap();
    assert!(
        alert_for(&all, "VirtguardVMIFilesystemFrozen", "web-1").is_empty(),
        "{all}"
    );
    assert!(
        alert_for(&all, "VirtguardVMIStorageReadLatencyHigh", "web-1").is_empty(),
        "{all}"
    );
    assert!(
        !all.as_array()
            .unwrap()
            .iter()
            .any(|a| a["labels"]["alertname"] == "VirtguardExporterDown"),
        "{all}"
    );
    assert!(fixture.scrapes.load(Ordering::Relaxed) >= 2);
}

/// The real `virtguard-exporter` binary (node mode, libvirt's built-in `test:///default` driver
/// with its one domain `test`), killed on drop.
struct RealExporter {
    child: Child,
    port: u16,
}

impl RealExporter {
    fn start(bin: &Path) -> Self {
        let port = free_port();
        let child = Command::new(bin)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--node-name", "worker-1"])
            .args(["--libvirt-socket-glob", ""])
            .args(["--libvirt-uri", "test:///default"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting virtguard-exporter");
        let mut me = Self { child, port };
        if !wait_for_port(port, Duration::from_secs(20)) {
            me.stop();
            panic!("virtguard-exporter did not listen on 127.0.0.1:{port} within 20s");
        }
        me
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RealExporter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// With the real exporter: Prometheus scrapes its series, no VM alert fires for a healthy
/// domain, and when the exporter dies `VirtguardExporterDown` fires for its target.
#[test]
fn exporter_down_fires_when_the_real_exporter_stops() {
    require_peer!(require_binary("prometheus"));
    let bin = require_peer!(workspace_bin("virtguard-exporter"));
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_with_short_for(dir.path());
    let mut exporter = RealExporter::start(&bin);
    let target = format!("127.0.0.1:{}", exporter.port);
    let prom = require_peer!(Prometheus::start(&PrometheusConfig {
        targets: vec![target.clone()],
        interval: Duration::from_secs(1),
        rule_files: rules,
        ..Default::default()
    }));
    let timeout = Duration::from_secs(45);
    prom.wait_for_result(
        r#"virtguard_vmi_scrape_success{name="test", node="worker-1"} == 1"#,
        timeout,
    )
    .unwrap();
    // Let every rule evaluate over real data a few times: nothing may fire yet.
    prom.wait_for_result("count_over_time(up[1m]) >= 4", timeout)
        .unwrap();
    let all = prom.alerts().unwrap();
    assert!(
        !all.as_array()
            .unwrap()
            .iter()
            .any(|a| a["state"] == "firing"),
        "alerts firing against a healthy exporter: {all}"
    );

    exporter.stop();
    let down = prom
        .wait_for_alert("VirtguardExporterDown", "firing", timeout)
        .unwrap();
    assert_eq!(down["labels"]["instance"], target.as_str());
    assert_eq!(down["labels"]["severity"], "warning");
    let desc = down["annotations"]["description"].as_str().unwrap();
    assert!(desc.contains(&format!("target {target}")), "{desc}");
}
