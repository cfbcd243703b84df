//! `GET /metrics` of a real controller (`fleet serve` in a network namespace of its own, DHCP on
//! a veth whose other end is a client namespace) after real traffic: busybox udhcpc's DISCOVER
//! and REQUEST and a garbage datagram, curl fetching a loader over TFTP and a kernel and part of
//! an initrd over HTTP, API calls, and an apply with one step failing. The scrape is curl's, and
//! the text must pass a strict reading of the exposition format (version 0.0.4) before the
//! exact counters are compared.

use crate::both_backends;
use crate::support::bootnet::{read, NamespacedController, API_LISTEN};
use crate::support::controller::FLEET;
use crate::support::netns::{link, NetNs};
use fleet::model::{Settlement, Status};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const CONTROLLER_IP: &str = "10.95.0.1";
const CLIENT_IP: &str = "10.95.0.2";
const KERNEL_BYTES: usize = 300_000;
const INITRD_BYTES: usize = 500_000;
const LOADER_BYTES: usize = 70_000;

/// A sample's series as written (`name{label="value",...}`) → its value.
type Samples = BTreeMap<String, f64>;

fn fleet_file(directory: &Path, interface: &str) -> std::path::PathBuf {
    let dir = directory.display();
    let text = format!(
        r#"[controller]
tftp_listen = "{CONTROLLER_IP}:69"
loader_dir = "{dir}/loaders"
dhcp_interfaces = ["{interface}"]

[subnets.lab]
cidr = "10.95.0.0/24"
interface = "{interface}"
dynamic_range = {{ start = "10.95.0.100", end = "10.95.0.149" }}
reserved = [{{ start = "10.95.0.1", end = "10.95.0.9", comment = "the controller and the test client" }}]

[images.tiny]
kernel = {{ path = "{dir}/kernel" }}
initrd = {{ path = "{dir}/initrd" }}

[[machine]]
name = "m-new"
macs = ["52:54:00:95:00:01"]
state = "new"
power = {{ type = "manual" }}

[[machine]]
name = "m-ready"
macs = ["52:54:00:95:00:02"]
state = "ready"
power = {{ type = "manual" }}
"#
    );
    let path = directory.join("fleet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Bytes that differ from file to file (so a wrong file is never the right size by chance).
fn write_bytes(path: &Path, length: usize, seed: u8) {
    let bytes: Vec<u8> = (0..length)
        .map(|index| (index as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    std::fs::write(path, bytes).unwrap();
}

fn run(mut command: Command) -> Output {
    command.stdin(Stdio::null()).output().expect("it runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// curl's `-w` answer (the status code) for `url` from the client namespace.
fn curl_status(client: &NetNs, extra: &[&str], url: &str) -> String {
    let mut command = client.command("curl");
    command
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(extra)
        .arg(url);
    String::from_utf8_lossy(&run(command).stdout).into_owned()
}

/// The scrape, by curl inside the controller's namespace (the API listens on its loopback),
/// trusting the controller's certificate only.
fn scrape(controller: &NamespacedController, token: Option<&str>) -> (String, String) {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &controller.namespace, "curl", "-sS"])
        .arg("--cacert")
        .arg(controller.state_dir.join("tls/cert.pem"))
        .args(["-w", "\n%{http_code} %{content_type}"]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    command.arg(format!("https://{API_LISTEN}/metrics"));
    let output = run(command);
    assert!(output.status.success(), "curl: {}", text(&output));
    let body = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, last) = body.rsplit_once('\n').expect("curl's -w line");
    (body.to_string(), last.to_string())
}

fn scrape_samples(controller: &NamespacedController, token: &str) -> Samples {
    let (body, answer) = scrape(controller, Some(token));
    assert_eq!(
        answer, "200 text/plain; version=0.0.4; charset=utf-8",
        "{body}"
    );
    parse_exposition(&body).unwrap_or_else(|problem| panic!("{problem}\n{body}"))
}

/// Scrapes until `done` holds (the counters of a transfer move when its last ACK is read, a
/// DHCP reply's once it is sent: a client may see its answer a moment before).
fn scrape_until(
    controller: &NamespacedController,
    token: &str,
    what: &str,
    done: impl Fn(&Samples) -> bool,
) -> Samples {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let samples = scrape_samples(controller, token);
        if done(&samples) {
            return samples;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never seen in the scrape: {samples:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn value(samples: &Samples, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in {samples:#?}"))
}

// ---------------------------------------------------------------------------------------------
// A strict reading of the text exposition format 0.0.4

/// Every line must be a `# HELP`, a `# TYPE` or a sample of the family last typed (its name,
/// or for a histogram its `_bucket`, `_sum` and `_count`); names and label names must be
/// valid, label values properly quoted and escaped, values numbers; no series twice; and each
/// histogram's buckets must grow with `le`, end at `+Inf` and agree with `_count`.
fn parse_exposition(body: &str) -> Result<Samples, String> {
    let mut samples = Samples::new();
    let mut family: Option<(String, String)> = None;
    let mut helped = std::collections::BTreeSet::new();
    if !body.ends_with('\n') {
        return Err("the text does not end with a line feed".into());
    }
    for (number, line) in body.lines().enumerate() {
        let number = number + 1;
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            check_name(name, number)?;
            if !helped.insert(name.to_string()) {
                return Err(format!("line {number}: a second HELP for {name}"));
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| format!("line {number}: TYPE without a type"))?;
            check_name(name, number)?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(format!("line {number}: unknown type {kind}"));
            }
            family = Some((name.to_string(), kind.to_string()));
        } else {
            let (series, sample_value) = parse_sample(line, number)?;
            let name = series.split('{').next().unwrap_or_default();
            let (family_name, kind) = family
                .as_ref()
                .ok_or_else(|| format!("line {number}: a sample before any TYPE"))?;
            let allowed = match kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name == format!("{family_name}{suffix}")),
                _ => name == family_name,
            };
            if !allowed {
                return Err(format!(
                    "line {number}: {name} is not of the family {family_name} ({kind})"
                ));
            }
            if samples.insert(series.clone(), sample_value).is_some() {
                return Err(format!("line {number}: {series} twice"));
            }
        }
    }
    check_histograms(&samples)?;
    Ok(samples)
}

fn check_name(name: &str, number: usize) -> Result<(), String> {
    let mut characters = name.chars();
    let first_ok = characters
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && characters.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("line {number}: `{name}` is not a metric name"))
    }
}

/// `name{label="value",...} value` → the series as written and the value.
fn parse_sample(line: &str, number: usize) -> Result<(String, f64), String> {
    let bad = |why: &str| format!("line {number}: {why}: {line}");
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| bad("no value after the name"))?;
    check_name(&line[..name_end], number)?;
    let mut rest = &line[name_end..];
    if let Some(labels) = rest.strip_prefix('{') {
        let length = parse_labels(labels).map_err(|why| bad(&why))?;
        rest = &labels[length..];
    }
    let series = &line[..line.len() - rest.len()];
    let number_text = rest
        .strip_prefix(' ')
        .ok_or_else(|| bad("no single space before the value"))?;
    let parsed = match number_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        other => other
            .parse::<f64>()
            .map_err(|_| bad("the value is not a number"))?,
    };
    Ok((series.to_string(), parsed))
}

/// Reads `label="value",...}` and returns how many bytes it took (through the `}`).
fn parse_labels(text: &str) -> Result<usize, String> {
    let bytes = text.as_bytes();
    let mut at = 0;
    loop {
        let name_start = at;
        while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
            at += 1;
        }
        let name = &text[name_start..at];
        if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
            return Err("a bad label name".into());
        }
        if !text[at..].starts_with("=\"") {
            return Err(format!("label {name} without =\""));
        }
        at += 2;
        loop {
            match bytes.get(at) {
                None => return Err("an unterminated label value".into()),
                Some(b'\\') => {
                    if !matches!(bytes.get(at + 1), Some(b'\\' | b'"' | b'n')) {
                        return Err("a bad escape in a label value".into());
                    }
                    at += 2;
                }
                Some(b'"') => {
                    at += 1;
                    break;
                }
                Some(b'\n') => return Err("a raw line feed in a label value".into()),
                Some(_) => at += 1,
            }
        }
        match bytes.get(at) {
            Some(b',') => at += 1,
            Some(b'}') => return Ok(at + 1),
            _ => return Err("labels not separated by , or closed by }".into()),
        }
    }
}

/// Each histogram series: buckets non-decreasing in `le` order as written, the last `+Inf`,
/// equal to `_count`.
fn check_histograms(samples: &Samples) -> Result<(), String> {
    let mut buckets: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    for (series, count) in samples {
        let Some((name, labels)) = series.split_once("_bucket{") else {
            continue;
        };
        let (others, le) = labels
            .rsplit_once(",le=\"")
            .or_else(|| labels.strip_prefix("le=\"").map(|le| ("", le)))
            .ok_or_else(|| format!("{series}: a bucket without le"))?;
        let le = le.trim_end_matches("\"}").to_string();
        let count_series = match others {
            "" => format!("{name}_count"),
            others => format!("{name}_count{{{others}}}"),
        };
        buckets.entry(count_series).or_default().push((le, *count));
    }
    for (count_series, mut series_buckets) in buckets {
        let bound = |le: &str| match le {
            "+Inf" => f64::INFINITY,
            other => other.parse().unwrap_or(f64::NAN),
        };
        series_buckets.sort_by(|a, b| bound(&a.0).total_cmp(&bound(&b.0)));
        if series_buckets.windows(2).any(|pair| pair[1].1 < pair[0].1) {
            return Err(format!("{count_series}: buckets that shrink"));
        }
        let last = series_buckets.last().expect("a bucket");
        let count = samples
            .get(&count_series)
            .ok_or_else(|| format!("no {count_series}"))?;
        if last.0 != "+Inf" || last.1 != *count {
            return Err(format!("{count_series}: the +Inf bucket is not the count"));
        }
    }
    Ok(())
}

#[test]
fn the_strict_reader_refuses_what_prometheus_would() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\\\"\"} 2\n";
    assert_eq!(parse_exposition(good).unwrap()["a_total{x=\"1\\\"\"}"], 2.0);
    for bad in [
        "# TYPE a counter\na{x=\"1\"}  2\n",
        "# TYPE a counter\na{x=1} 2\n",
        "# TYPE a counter\na{x=\"1\"} two\n",
        "# TYPE a counter\nb 2\n",
        "# TYPE a counter\na 2\na 3\n",
        "# TYPE 1a counter\n1a 2\n",
        "# TYPE a counter\na 2",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_count 2\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted: {bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// The controller under real traffic

struct Lab {
    controller: NamespacedController,
    client: NetNs,
    client_interface: String,
    fleet: std::path::PathBuf,
    directory: tempfile::TempDir,
    // Last: the controller stops (drop) before its namespace goes.
    _server: NetNs,
}

fn start_lab() -> Lab {
    let directory = tempfile::tempdir().unwrap();
    let (server, client) = (NetNs::new("ms"), NetNs::new("mc"));
    let (server_interface, client_interface) = link(
        &server,
        &format!("{CONTROLLER_IP}/24"),
        &client,
        &format!("{CLIENT_IP}/24"),
    );
    std::fs::create_dir(directory.path().join("loaders")).unwrap();
    write_bytes(
        &directory.path().join("loaders/loader.efi"),
        LOADER_BYTES,
        1,
    );
    write_bytes(&directory.path().join("kernel"), KERNEL_BYTES, 2);
    write_bytes(&directory.path().join("initrd"), INITRD_BYTES, 3);
    let fleet = fleet_file(directory.path(), &server_interface);
    let controller = NamespacedController::start_in(
        &server,
        &format!("{CONTROLLER_IP}:5248"),
        directory.path(),
        &fleet,
    );
    let log = read(&controller.log);
    assert!(log.contains("serving"), "DHCP is not serving: {log}");
    Lab {
        controller,
        client,
        client_interface,
        fleet,
        directory,
        _server: server,
    }
}

/// busybox udhcpc in the client namespace until it is bound (its script writes the lease).
fn dhcp_lease(lab: &Lab) -> String {
    let bound = lab.directory.path().join("bound");
    let script = lab.directory.path().join("udhcpc.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && echo \"$ip\" > {}.tmp && mv {0}.tmp {0}\nexit 0\n",
            bound.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    let mut client = KillOnDrop(
        lab.client
            .command("busybox")
            .args(["udhcpc", "-f", "-i", &lab.client_interface, "-s"])
            .arg(&script)
            .args(["-t", "3", "-T", "3", "-A", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("busybox runs (.ci/setup-dhcp installs busybox-static)"),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(address) = std::fs::read_to_string(&bound) {
            return address.trim().to_string();
        }
        if let Ok(Some(status)) = client.0.try_wait() {
            panic!("udhcpc exited ({status}) without a lease");
        }
        assert!(Instant::now() < deadline, "no lease within 15 s");
        std::thread::sleep(Duration::from_millis(25));
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A datagram no DHCP server can read, sent to the controller's port 67 from the client.
fn send_garbage_to_dhcp(lab: &Lab) {
    lab.client.run_in(|| {
        let socket = std::net::UdpSocket::bind(format!("{CLIENT_IP}:0")).unwrap();
        socket
            .send_to(b"not a DHCP message", format!("{CONTROLLER_IP}:67"))
            .unwrap();
    });
}

fn fetch_over_tftp(lab: &Lab) {
    let target = lab.directory.path().join("fetched.efi");
    let mut command = lab.client.command("curl");
    command
        .args(["-sS", "--tftp-blksize", "1468", "-o"])
        .arg(&target)
        .arg(format!("tftp://{CONTROLLER_IP}/loader.efi"));
    let output = run(command);
    assert!(output.status.success(), "curl tftp: {}", text(&output));
    assert_eq!(
        std::fs::metadata(&target).unwrap().len() as usize,
        LOADER_BYTES
    );
}

/// `fleet apply` in the controller's namespace; m-ready's commissioning is failed as its
/// machine would report it, so one step fails and two are done (two adds).
async fn apply_with_one_failure(lab: &Lab) {
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.controller.namespace, FLEET])
        .arg("--state-dir")
        .arg(&lab.controller.state_dir)
        .args(["apply", "--yes", "-f"])
        .arg(&lab.fleet)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fleet apply runs");
    let mut child = KillOnDrop(child);
    let store = lab.controller.store().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "fleet apply did not finish");
        let record = store.machine("m-ready").await.unwrap();
        if record.is_some_and(|record| record.lifecycle.status == Status::Commissioning) {
            let failed = Settlement::Failed {
                reason: "a test script failed".into(),
            };
            fleet::services::actions::settle_machine(&store, "m-ready", "test", &failed)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = child.0.wait().unwrap();
    assert!(!status.success(), "the apply had a failed step");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_real_dhcp_tftp_http_boot_api_and_apply_traffic() {
    let lab = start_lab();
    let token = lab.controller.operator_token();
    let (body, answer) = scrape(&lab.controller, None);
    assert!(answer.starts_with("401 "), "{answer}: {body}");

    let before = scrape_samples(&lab.controller, &token);
    let statuses: Vec<&String> = before
        .keys()
        .filter(|series| series.starts_with("fleet_machines{"))
        .collect();
    assert_eq!(statuses.len(), 23, "{statuses:?}");
    assert!(before
        .iter()
        .filter(|(series, _)| !series.starts_with("fleet_http_request_duration"))
        .all(|(_, value)| *value == 0.0));

    let address = dhcp_lease(&lab);
    assert!(address.starts_with("10.95.0.1"), "{address}");
    send_garbage_to_dhcp(&lab);
    fetch_over_tftp(&lab);
    let boot = format!("http://{CONTROLLER_IP}:5248");
    let kernel = curl_status(&lab.client, &[], &format!("{boot}/boot/files/tiny/kernel"));
    assert_eq!(kernel, "200");
    let part = curl_status(
        &lab.client,
        &["-r", "1000-1999"],
        &format!("{boot}/boot/files/tiny/initrd"),
    );
    assert_eq!(part, "206");
    let missing = curl_status(&lab.client, &[], &format!("{boot}/nothing/here"));
    assert_eq!(missing, "404");
    let shown = lab.controller.cli(&["machine", "show", "nobody"]);
    assert!(!shown.status.success(), "{}", text(&shown));
    apply_with_one_failure(&lab).await;

    let after = scrape_until(&lab.controller, &token, "every counter", |samples| {
        samples.get("fleet_tftp_sent_bytes_total") == Some(&(LOADER_BYTES as f64))
            && samples.get("fleet_dhcp_drops_total{reason=\"malformed\"}") == Some(&1.0)
            // An ACK is counted once sent, by a task that waits for its lease to be committed.
            && samples.get("fleet_dhcp_replies_total{type=\"ack\"}") == Some(&1.0)
            && samples.get("fleet_apply_steps_total{outcome=\"failed\"}") == Some(&1.0)
    });
    let exact = [
        ("fleet_dhcp_replies_total{type=\"offer\"}", 1.0),
        ("fleet_dhcp_replies_total{type=\"ack\"}", 1.0),
        ("fleet_dhcp_replies_total{type=\"nak\"}", 0.0),
        ("fleet_dhcp_drops_total{reason=\"unanswered\"}", 0.0),
        ("fleet_dhcp_drops_total{reason=\"unsent\"}", 0.0),
        ("fleet_tftp_sent_bytes_total", LOADER_BYTES as f64),
        ("fleet_http_boot_sent_bytes_total", (KERNEL_BYTES + 1000) as f64),
        ("fleet_apply_steps_total{outcome=\"done\"}", 2.0),
        ("fleet_machines{status=\"new\"}", 1.0),
        ("fleet_machines{status=\"failed_commissioning\"}", 1.0),
        ("fleet_machines{status=\"ready\"}", 0.0),
        (
            "fleet_http_request_duration_seconds_count{listener=\"boot\",route=\"/boot/files/{image}/{file}\",method=\"GET\",status=\"2xx\"}",
            2.0,
        ),
        (
            "fleet_http_request_duration_seconds_count{listener=\"boot\",route=\"unmatched\",method=\"GET\",status=\"4xx\"}",
            1.0,
        ),
        (
            "fleet_http_request_duration_seconds_count{listener=\"api\",route=\"/api/v1/machines/{name}\",method=\"GET\",status=\"4xx\"}",
            1.0,
        ),
        (
            "fleet_http_request_duration_seconds_count{listener=\"api\",route=\"/metrics\",method=\"GET\",status=\"4xx\"}",
            1.0,
        ),
    ];
    for (series, expected) in exact {
        assert_eq!(value(&after, series), expected, "{series}");
    }
    let api_calls = value(
        &after,
        "fleet_http_request_duration_seconds_count{listener=\"api\",route=\"/api/v1/applies\",method=\"POST\",status=\"2xx\"}",
    );
    assert_eq!(api_calls, 1.0);
    // Templates only: no machine name, file name or raw path ever becomes a label.
    for series in after.keys() {
        assert!(
            !series.contains("nobody") && !series.contains("m-ready") && !series.contains("kernel"),
            "{series}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The machines per status: one grouped query, on both backends

fn new_machine(name: &str, index: u8) -> fleet::store::NewMachine {
    let mac = fleet::model::MacAddr([0x52, 0x54, 0, 0x95, 1, index]);
    crate::support::machines::manual_machine(name, vec![mac])
}

/// Puts the machine in `status` directly (a fixture, past the life-cycle's rules).
async fn put_in(store: &fleet::store::Store, name: &str, status: Status) {
    let mut lifecycle = store.machine(name).await.unwrap().unwrap().lifecycle;
    lifecycle.status = status;
    store
        .write_lifecycle(name, &lifecycle, "test", "fixture")
        .await
        .unwrap();
}

both_backends!(
    machines_are_counted_per_status_in_one_query,
    |store| async move {
        assert_eq!(store.machine_counts_by_status().await.unwrap(), []);
        let machines: Vec<_> = (1..=4)
            .map(|index| new_machine(&format!("c-{index}"), index))
            .collect();
        store.create_machines(&machines, "test").await.unwrap();
        put_in(&store, "c-1", Status::Ready).await;
        put_in(&store, "c-2", Status::Ready).await;
        put_in(&store, "c-4", Status::FailedCommissioning).await;
        let mut counts = store.machine_counts_by_status().await.unwrap();
        counts.sort();
        assert_eq!(
            counts,
            [
                (Status::New, 1),
                (Status::FailedCommissioning, 1),
                (Status::Ready, 2)
            ]
        );
        let text = fleet::metrics::Metrics::new().render(&counts);
        let samples = parse_exposition(&text).unwrap();
        assert_eq!(value(&samples, "fleet_machines{status=\"ready\"}"), 2.0);
        assert_eq!(value(&samples, "fleet_machines{status=\"deployed\"}"), 0.0);
    }
);
