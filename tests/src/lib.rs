//! Black-box test harness: starts the real `invariant` binary on a free loopback port with its
//! own configuration and speaks HTTP to it. Nothing here links the server's code.
//!
//! The binary is `$INVARIANT_TEST_BIN` if set, else `target/debug/invariant` of this
//! workspace; `scripts/test.sh` builds it first. A missing binary fails the test loudly.

use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An HTTP client. In a workspace build reqwest carries rustls without a bundled crypto
/// provider (the object-store crate's choice), so ring is installed as the process's provider
/// first.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `invariant` binary under test.
pub fn binary() -> PathBuf {
    let path = std::env::var_os("INVARIANT_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/invariant"));
    assert!(
        path.exists(),
        "the invariant binary is missing at {}: run `cargo build --bin invariant` (scripts/test.sh does) \
         or set INVARIANT_TEST_BIN",
        path.display()
    );
    path
}

/// The shipped model repository.
pub fn shipped_models() -> PathBuf {
    workspace_root().join("models")
}

/// The shipped golden vectors.
pub fn shipped_golden() -> PathBuf {
    workspace_root().join("golden-vectors")
}

/// Test fixtures (extra models) under `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    workspace_root().join("tests/fixtures")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Copies a directory tree (for tampering with a copy of the shipped repository).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Model repository.
    pub model_repository: PathBuf,
    /// `server.default_corridor`; `None` makes the corridor mandatory.
    pub default_corridor: Option<String>,
    /// `server.max_body_bytes`.
    pub max_body_bytes: usize,
    /// Golden vector directory.
    pub golden_vectors: PathBuf,
    /// Extra top-level TOML (tables such as `[cache]` or `[pools]`).
    pub extra: String,
    /// Extra keys of the `UK-NG` corridor table (e.g. `workers = 1`).
    pub uk_ng: String,
    /// Extra top-level keys (e.g. `feature_store = "..."`).
    pub top: String,
    /// Extra keys of the `[server]` table (e.g. `idle_timeout_ms = 500`).
    pub server: String,
    /// The CA that signed the server's TLS certificate, when `server` configures
    /// `[server.tls]`: the harness then checks liveness over TLS.
    pub tls_ca: Option<PathBuf>,
    /// The client certificate and key the harness presents over TLS (servers requiring them).
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Require API keys (off: the server runs with `--dev-no-auth`, as most tests need no
    /// keys). Create keys with [`Server::create_key`].
    pub auth: bool,
    /// Extra environment variables of the server process (e.g. `INVARIANT_LOG`).
    pub env: Vec<(String, String)>,
    /// The state directory (default: a fresh one inside the server's temporary directory).
    pub state_dir: Option<PathBuf>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            model_repository: shipped_models(),
            default_corridor: Some("UAE-SA".into()),
            max_body_bytes: 1 << 20,
            golden_vectors: shipped_golden(),
            extra: String::new(),
            uk_ng: String::new(),
            top: String::new(),
            server: String::new(),
            tls_ca: None,
            tls_client: None,
            auth: false,
            env: Vec::new(),
            state_dir: None,
        }
    }
}

/// A `redis-server` on a free loopback port with no persistence, killed on drop.
pub struct RedisServer {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl RedisServer {
    /// Starts one (fails loudly when `redis-server` is not installed: scripts/test.sh installs it).
    pub fn start() -> Self {
        let port = free_port();
        Self::start_on(port)
    }

    /// Starts one on `port` (to restart a killed one at the same address).
    pub fn start_on(port: u16) -> Self {
        Self::spawn(port, &[])
    }

    /// Starts `redis-server` on `port` with `extra` arguments and waits until it answers PING.
    fn spawn(port: u16, extra: &[String]) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it with apt)");
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if server.ping() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer PING on port {port}");
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    /// How many clients are connected to it now (`INFO clients`), not counting this query's
    /// own connection.
    pub fn connected_clients(&self) -> usize {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis-server");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
        s.write_all(b"INFO clients\r\n").expect("INFO clients");
        // A bulk string: `$<length>\r\n<text>\r\n`.
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(head) = reply.windows(2).position(|w| w == b"\r\n") {
                let length: usize = String::from_utf8_lossy(&reply[1..head]).parse().expect("a bulk reply");
                if reply.len() >= head + 2 + length {
                    break;
                }
            }
            let n = s.read(&mut buf).expect("INFO reply");
            assert!(n > 0, "redis-server closed the connection");
            reply.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&reply);
        let count: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("connected_clients in INFO clients");
        count - 1
    }

    /// Stops it with SIGSTOP: it keeps its socket and accepts connections, but never answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes it after [`RedisServer::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let status = Command::new("kill")
            .args([which, &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill {which} failed");
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port whose cluster bus port (the port + 10000, which a cluster node also binds) is
/// free and valid too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= u16::MAX - 10000 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// A three-node Redis Cluster on free loopback ports (no replicas, no persistence).
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts the nodes and joins them into a cluster (fails loudly if that does not work).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_cluster_port();
            let extra = [
                "--cluster-enabled".to_string(),
                "yes".to_string(),
                "--cluster-config-file".to_string(),
                format!("nodes-{port}.conf"),
                "--dir".to_string(),
                dir.path().display().to_string(),
            ];
            nodes.push(RedisServer::spawn(port, &extra));
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = nodes.iter().all(|n| {
                let info = Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "cluster", "info"])
                    .output();
                info.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            });
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "the cluster never reached cluster_state:ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { nodes, _dir: dir }
    }

    /// `redis+cluster://127.0.0.1:a,127.0.0.1:b,127.0.0.1:c/`
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{}/", addrs.join(","))
    }

    /// Keys stored on each node.
    pub fn keys_per_node(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| {
                let out = Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "dbsize"])
                    .output()
                    .expect("dbsize");
                String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
            })
            .collect()
    }
}

/// The sum of a Prometheus counter's samples whose labels contain every `label="value"` given.
pub async fn counter(server: &Server, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = server
        .client
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// A TCP proxy on a free loopback port to `upstream`, whose connections can be cut (every open
/// one closed, new ones refused) and restored: a network partition between one process and a
/// service.
pub struct TcpProxy {
    /// Its port.
    pub port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl TcpProxy {
    /// Proxies a new free port to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                };
                let mut held = o.lock().unwrap_or_else(|p| p.into_inner());
                for s in [&client, &server] {
                    if let Ok(s) = s.try_clone() {
                        held.push(s);
                    }
                }
                if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
                    pipe(c2, s2);
                    pipe(server, client);
                }
            }
        });
        Self { port, cut, open }
    }

    /// Closes every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// `redis://127.0.0.1:<port>`, for a proxied Redis.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// moto's S3-compatible server (`.venv-moto`, installed by `scripts/setup-python.sh`) on a
/// free loopback port, killed on drop. Its buckets are created writable by anonymous requests,
/// so tests put, overwrite and delete objects with plain HTTP (the server signs its own).
pub struct S3Server {
    child: Child,
    log: tempfile::NamedTempFile,
    /// Its endpoint, e.g. `http://127.0.0.1:40123`.
    pub endpoint: String,
    client: reqwest::Client,
}

impl S3Server {
    /// Starts one (fails loudly when `.venv-moto` is missing: scripts/test.sh installs it).
    pub async fn start() -> Self {
        let server = workspace_root().join(".venv-moto/bin/moto_server");
        assert!(
            server.exists(),
            "{} is missing: run scripts/setup-python.sh (scripts/test.sh does)",
            server.display()
        );
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("moto log");
        let child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("moto log"))
            .spawn()
            .expect("spawn moto_server");
        let s = Self {
            log,
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            client: http_client(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while s.client.get(&s.endpoint).send().await.is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start in 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Creates a bucket that anonymous requests (the tests') may write and overwrite in.
    pub async fn create_bucket(&self, bucket: &str) {
        let r = self
            .client
            .put(format!("{}/{bucket}", self.endpoint))
            .header("x-amz-acl", "public-read-write")
            .send()
            .await
            .expect("create bucket");
        assert!(r.status().is_success(), "create bucket {bucket}: {}", r.status());
    }

    /// Puts one object.
    pub async fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>) {
        let r = self
            .client
            .put(format!("{}/{bucket}/{key}", self.endpoint))
            .body(bytes)
            .send()
            .await
            .expect("put object");
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "put {bucket}/{key}: {status} {body}\n{}",
            self.log()
        );
    }

    /// Puts every file under `dir` as `<prefix>/<relative path>`; returns how many.
    pub async fn put_tree(&self, bucket: &str, prefix: &str, dir: &Path) -> usize {
        let mut stack = vec![dir.to_path_buf()];
        let mut count = 0;
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).expect("read dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let rel = path
                        .strip_prefix(dir)
                        .expect("under dir")
                        .to_string_lossy()
                        .replace('\\', "/");
                    self.put(bucket, &format!("{prefix}/{rel}"), std::fs::read(&path).expect("read"))
                        .await;
                    count += 1;
                }
            }
        }
        count
    }

    /// Removes one object.
    pub async fn delete(&self, bucket: &str, key: &str) {
        let r = self
            .client
            .delete(format!("{}/{bucket}/{key}", self.endpoint))
            .send()
            .await
            .expect("delete object");
        assert!(r.status().is_success(), "delete {bucket}/{key}: {}", r.status());
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `invariant serve`, killed on drop.
pub struct Server {
    child: Child,
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    /// gRPC address, e.g. `127.0.0.1:40124`.
    pub grpc: String,
    /// Shared HTTP client.
    pub client: reqwest::Client,
    dir: tempfile::TempDir,
    state_dir: PathBuf,
    tls_ca: Option<PathBuf>,
    tls_client: Option<(PathBuf, PathBuf)>,
}

/// The configuration file the harness writes.
fn config_text(options: &ServerOptions, state_dir: &Path) -> String {
    let default = options
        .default_corridor
        .as_ref()
        .map(|c| format!("default_corridor = \"{c}\"\n"))
        .unwrap_or_default();
    format!(
        r#"model_repository = "{}"
golden_vectors = "{}"
state_dir = "{}"
engine_instances = 2
{top}
[server]
http_addr = "127.0.0.1:0"
max_body_bytes = {}
{default}{server}

[[corridors]]
id = "UAE-SA"
market = 0
region = "gcc"
[[corridors]]
id = "US-EG"
market = 0
region = "mena"
{extra}
[[corridors]]
id = "UK-NG"
market = 1
region = "west-africa"
{uk_ng}
"#,
        options.model_repository.display(),
        options.golden_vectors.display(),
        state_dir.display(),
        options.max_body_bytes,
        extra = options.extra,
        uk_ng = options.uk_ng,
        top = options.top,
        server = options.server,
    )
}

impl Server {
    /// Starts a server with the shipped models and default options.
    pub async fn start() -> Self {
        Self::start_with(ServerOptions::default()).await
    }

    /// Starts a server and waits (up to 60 s) until `/v2/health/live` answers.
    pub async fn start_with(options: ServerOptions) -> Self {
        match Self::try_start(options).await {
            Ok(server) => server,
            Err(log) => panic!("server did not become live; log:\n{log}"),
        }
    }

    /// Starts a server; `Err(log)` when it stopped (or never became live) instead.
    pub async fn try_start(options: ServerOptions) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("invariant.toml");
        let state_dir = options.state_dir.clone().unwrap_or_else(|| dir.path().join("state"));
        std::fs::write(&config, config_text(&options, &state_dir)).expect("write config");
        let mut dir = Some(dir);
        // A free port may be taken by another test between choosing it and binding it: start
        // again on new ports when that is why the server stopped.
        for attempt in 0.. {
            let port = free_port();
            let grpc_port = free_port();
            let log_path = dir.as_ref().expect("dir").path().join("server.log");
            let log = std::fs::File::create(&log_path).expect("log file");
            let mut command = Command::new(binary());
            command
                .args(["serve", "--config"])
                .arg(&config)
                .args(["--http-addr", &format!("127.0.0.1:{port}")])
                .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")]);
            if !options.auth {
                command.arg("--dev-no-auth");
            }
            let child = command
                .env_remove("INVARIANT_KEY_PEPPER")
                .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .current_dir(workspace_root())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn invariant serve");
            let mut server = Self {
                state_dir: state_dir.clone(),
                tls_ca: options.tls_ca.clone(),
                tls_client: options.tls_client.clone(),
                child,
                url: format!("http://127.0.0.1:{port}"),
                grpc: format!("127.0.0.1:{grpc_port}"),
                client: http_client(),
                dir: dir.take().expect("dir"),
            };
            match server.wait_live().await {
                Ok(()) => return Ok(server),
                Err(log) if attempt < 3 && log.contains("Address already in use") => {
                    let _ = server.child.wait();
                    dir = Some(std::mem::replace(
                        &mut server.dir,
                        tempfile::tempdir().expect("tempdir"),
                    ));
                }
                Err(log) => return Err(log),
            }
        }
        unreachable!("the loop returns")
    }

    /// Waits (up to 60 s) until the server answers its liveness check; `Err(log)` when it
    /// stopped or never answered.
    async fn wait_live(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Err(self.log());
            }
            if let Some(ca) = &self.tls_ca {
                let addr = self.url.trim_start_matches("http://");
                let live = b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
                let client = self.tls_client.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
                if let Ok(reply) = tls_exchange(addr, ca, client, live).await {
                    if reply.text.starts_with("HTTP/1.1 200") {
                        return Ok(());
                    }
                }
            } else if let Ok(r) = self.client.get(format!("{}/v2/health/live", self.url)).send().await {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("(not live in 60 s)\n{}", self.log()))
    }

    /// The server's configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("invariant.toml")
    }

    /// Creates an API key with `invariant keys create` on this server's key file and waits
    /// until the server accepts it; returns its id and the whole key.
    pub async fn create_key(&self, name: &str, roles: &[&str], corridors: &[&str]) -> (String, String) {
        let config = self.config_path().display().to_string();
        let mut args = vec!["keys", "create", "--config", &config, "--name", name, "--json"];
        for r in roles {
            args.extend(["--role", r]);
        }
        for c in corridors {
            args.extend(["--corridor", c]);
        }
        let (code, out, err) = invariant(&args);
        assert_eq!(code, 0, "keys create failed: {err}");
        let key: Value = serde_json::from_str(&out).expect("keys create --json");
        let (id, secret) = (key["id"].as_str().expect("id"), key["secret"].as_str().expect("secret"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self
                .client
                .get(format!("{}/v2", self.url))
                .bearer_auth(secret)
                .send()
                .await
                .expect("GET /v2");
            if r.status() == 200 {
                return (id.to_string(), secret.to_string());
            }
            assert!(
                Instant::now() < deadline,
                "the server never accepted key {id}: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server's state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Where the server's audit chains are.
    pub fn audit_dir(&self) -> PathBuf {
        self.state_dir.join("audit")
    }

    /// Every audit record written so far, of every chain, in time order (each chain's
    /// records in sequence).
    pub fn audit(&self) -> Vec<Value> {
        audit_records(&self.audit_dir())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// GET a path; returns status and JSON body (`Value::Null` when the body is empty).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("GET");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).expect("JSON body")
            },
        )
    }

    /// POST raw bytes with optional headers; returns status and JSON body.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = self
            .client
            .post(format!("{}{path}", self.url))
            .body(body)
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.expect("POST");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("non-JSON body ({e}): {text}")),
        )
    }

    /// POST a body with `Transfer-Encoding: chunked`, one chunk per element of `chunks`, each
    /// written after a pause (so the server receives them separately), over a plain loopback
    /// socket; returns status and JSON body.
    pub async fn post_chunked(&self, path: &str, chunks: Vec<Vec<u8>>) -> (u16, Value) {
        use std::io::{Read, Write};
        let addr = self.url.trim_start_matches("http://").to_string();
        let path = path.to_string();
        let response = tokio::task::spawn_blocking(move || {
            let mut socket = std::net::TcpStream::connect(&addr).expect("connect");
            socket.set_nodelay(true).expect("nodelay");
            write!(
                socket,
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
                 Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            )
            .expect("head");
            for chunk in chunks {
                socket
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .expect("size");
                socket.write_all(&chunk).expect("chunk");
                socket.write_all(b"\r\n").expect("chunk end");
                socket.flush().expect("flush");
                std::thread::sleep(Duration::from_millis(30));
            }
            // The server may answer (413) before the last chunk; it may then close the socket.
            let _ = socket.write_all(b"0\r\n\r\n");
            let mut response = Vec::new();
            socket.read_to_end(&mut response).expect("response");
            String::from_utf8(response).expect("UTF-8 response")
        })
        .await
        .expect("chunked POST");
        let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head}"));
        assert!(
            head.to_ascii_lowercase().contains("content-length"),
            "replies carry a length: {head}"
        );
        (
            status,
            serde_json::from_str(body).unwrap_or_else(|e| panic!("non-JSON body ({e}): {body}")),
        )
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = self
            .client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("GET /metrics");
        r.text().await.expect("metrics body")
    }

    /// POST a JSON value.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, body.to_string(), &[]).await
    }

    /// Asserts that the server still serves: live, and a known request scores.
    pub async fn assert_still_serving(&self) {
        assert_eq!(self.get("/v2/health/live").await.0, 200, "server stopped being live");
        let (status, body) = self
            .post(
                "/v2/models/trust-scorer/versions/1.1.0/infer",
                &trust_request(&[TRUST_ROW]),
            )
            .await;
        assert_eq!(status, 200, "server stopped serving: {body}");
    }
}

impl Server {
    /// The server's temporary directory (config, state, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// POSTs an admin action on a version; returns status and body.
    pub async fn admin(&self, model: &str, version: &str, action: &str, body: Value) -> (u16, Value) {
        self.post(&format!("/admin/v1/models/{model}/versions/{version}/{action}"), &body)
            .await
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL (no shutdown handler runs).
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every record of the audit chains under `dir`, in time order (each chain in sequence).
pub fn audit_records(dir: &Path) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let Ok(chains) = std::fs::read_dir(dir) else {
        return out;
    };
    for chain in chains.flatten() {
        let mut segments: Vec<PathBuf> = std::fs::read_dir(chain.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        segments.sort();
        for seg in segments {
            let text = std::fs::read_to_string(&seg).expect("audit segment");
            out.extend(
                text.lines()
                    .map(|l| serde_json::from_str::<Value>(l).expect("audit line is JSON")),
            );
        }
    }
    out.sort_by(|a, b| {
        (a["time"].as_str(), a["chain"].as_str(), a["seq"].as_u64()).cmp(&(
            b["time"].as_str(),
            b["chain"].as_str(),
            b["seq"].as_u64(),
        ))
    });
    out
}

/// A trust-scorer feature row: account_age_days, completed_orders, dispute_rate, avg_rating,
/// response_time_hours, kyc_level, cancellations_90d, chargebacks_365d.
pub const TRUST_ROW: [f64; 8] = [420.0, 57.0, 0.02, 4.6, 3.5, 2.0, 1.0, 0.0];

/// A V2 request with one FP32 `features` tensor made of `rows`.
pub fn features_request(rows: &[&[f64]]) -> Value {
    let width = rows.first().map(|r| r.len()).unwrap_or(0);
    let data: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    serde_json::json!({ "inputs": [{ "name": "features", "shape": [rows.len(), width], "datatype": "FP32", "data": data }] })
}

/// A trust-scorer request.
pub fn trust_request(rows: &[[f64; 8]]) -> Value {
    let rows: Vec<&[f64]> = rows.iter().map(|r| &r[..]).collect();
    features_request(&rows)
}

/// The bits of an FP32 output's elements (JSON carries the shortest decimal that parses back
/// to the same f32, so parsing the text as f32 recovers the exact bits).
pub fn f32_bits(output: &Value) -> Vec<u32> {
    output["data"]
        .as_array()
        .expect("data array")
        .iter()
        .map(|v| {
            let text = v.to_string();
            text.parse::<f32>()
                .unwrap_or_else(|_| panic!("not a number: {text}"))
                .to_bits()
        })
        .collect()
}

/// The output named `name` of a V2 response.
pub fn output<'a>(response: &'a Value, name: &str) -> &'a Value {
    response["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["name"] == name))
        .unwrap_or_else(|| panic!("no output {name} in {response}"))
}

/// Asserts a V2 error: the status, and an `error` message containing every fragment.
pub fn assert_error(got: &(u16, Value), status: u16, fragments: &[&str]) {
    assert_eq!(got.0, status, "unexpected status, body {}", got.1);
    let message = got.1["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {}", got.1));
    for f in fragments {
        assert!(message.contains(f), "error {message:?} does not mention {f:?}");
    }
}

/// Runs the `invariant` binary in the workspace root; returns exit code, stdout and stderr.
pub fn invariant(args: &[&str]) -> (i32, String, String) {
    run_in_root(Command::new(binary()).args(args))
}

/// Runs the `invariant` binary under `qemu-x86_64 -cpu CPU` (user-mode emulation: the binary
/// sees that CPU's features), in the workspace root.
pub fn invariant_on_cpu(cpu: &str, args: &[&str]) -> (i32, String, String) {
    run_in_root(
        Command::new("qemu-x86_64")
            .arg("-cpu")
            .arg(cpu)
            .arg(binary())
            .args(args),
    )
}

fn run_in_root(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd
        .current_dir(workspace_root())
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect(
            "run invariant (qemu-x86_64 must be installed for the emulated runs: the test command installs qemu-user)",
        );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A temporary copy of the shipped models (`models/`) and golden vectors (`golden/`).
pub struct RepoCopy {
    dir: tempfile::TempDir,
}

impl RepoCopy {
    /// Copies the shipped repository and golden vectors.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_tree(&shipped_models(), &dir.path().join("models"));
        copy_tree(&shipped_golden(), &dir.path().join("golden"));
        Self { dir }
    }

    /// Adds a fixture model (`tests/fixtures/models/<name>`, with its golden vectors).
    pub fn with_fixture(self, name: &str) -> Self {
        copy_tree(&fixtures().join("models").join(name), &self.models().join(name));
        copy_tree(&fixtures().join("golden-vectors").join(name), &self.golden().join(name));
        self
    }

    /// The model repository.
    pub fn models(&self) -> PathBuf {
        self.dir.path().join("models")
    }

    /// The golden vector directory.
    pub fn golden(&self) -> PathBuf {
        self.dir.path().join("golden")
    }

    /// A version directory.
    pub fn version_dir(&self, model: &str, version: &str) -> PathBuf {
        self.models().join(model).join(version)
    }

    /// Server options serving this copy.
    pub fn options(&self) -> ServerOptions {
        ServerOptions {
            model_repository: self.models(),
            golden_vectors: self.golden(),
            ..Default::default()
        }
    }

    /// `--model-repository`, `--golden-vectors` and `--state-dir` (the copy's own) arguments
    /// for the CLI.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--model-repository".into(),
            self.models().display().to_string(),
            "--golden-vectors".into(),
            self.golden().display().to_string(),
            "--state-dir".into(),
            self.state_dir().display().to_string(),
        ]
    }

    /// A state directory that belongs to the copy (for the CLI, or a server that must find
    /// the state again after a restart: [`ServerOptions::state_dir`]).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

impl Default for RepoCopy {
    fn default() -> Self {
        Self::new()
    }
}

/// Rewrites every artifact hash in a version's manifest to match the files on disk, as a
/// careless publisher would after changing weights (so only golden vectors can catch it).
pub fn rehash_manifest(version_dir: &Path) {
    use sha2::Digest;
    let path = version_dir.join("manifest.toml");
    let mut text = std::fs::read_to_string(&path).expect("manifest");
    let mut current_file: Option<PathBuf> = None;
    let mut out = String::new();
    for line in text.lines() {
        let value = line.split('"').nth(1).unwrap_or_default().to_string();
        if line.starts_with("path = ") {
            current_file = Some(version_dir.join(&value));
        }
        let rewritten = match (&current_file, line.split(" = ").next()) {
            (Some(f), Some("sha256")) => {
                format!(
                    "sha256 = \"{}\"",
                    hex::encode(sha2::Sha256::digest(std::fs::read(f).expect("artifact")))
                )
            }
            (Some(f), Some("blake3")) => {
                format!(
                    "blake3 = \"{}\"",
                    blake3::hash(&std::fs::read(f).expect("artifact")).to_hex()
                )
            }
            _ => line.to_string(),
        };
        out.push_str(&rewritten);
        out.push('\n');
    }
    text = out;
    std::fs::write(&path, text).expect("write manifest");
}

/// Moves element `index` of safetensors tensor `tensor` (FP32) up by one ULP, in place.
pub fn bump_weight_one_ulp(safetensors: &Path, tensor: &str, index: usize) {
    let mut bytes = std::fs::read(safetensors).expect("safetensors");
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).expect("header JSON");
    let start = header[tensor]["data_offsets"][0].as_u64().expect("tensor offsets") as usize;
    let at = 8 + header_len + start + index * 4;
    let bits = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) + 1;
    bytes[at..at + 4].copy_from_slice(&bits.to_le_bytes());
    std::fs::write(safetensors, bytes).expect("write safetensors");
}

/// A test PKI written as PEM files: a CA, a server certificate for `localhost` and
/// `127.0.0.1` signed by it, and a client certificate signed by it.
pub struct TestPki {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server's certificate and key.
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
    /// A client certificate the CA signed.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

impl TestPki {
    /// Generates a PKI in `dir` whose server certificate names `cn`.
    pub fn generate(dir: &Path, cn: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
        std::fs::create_dir_all(dir).expect("pki dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "invariant test CA");
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |purpose: ExtendedKeyUsagePurpose, name: &str| {
            let mut params =
                CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params");
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![purpose];
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &issuer).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(ExtendedKeyUsagePurpose::ServerAuth, cn);
        let (client_cert, client_key) = leaf(ExtendedKeyUsagePurpose::ClientAuth, "invariant test client");
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write pem");
            p
        };
        Self {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
        }
    }

    /// The `[server.tls]` table for this PKI (client certificates required when `mtls`).
    pub fn server_table(&self, mtls: bool) -> String {
        let client_ca = if mtls {
            format!("client_ca = \"{}\"\n", self.ca.display())
        } else {
            String::new()
        };
        format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n{client_ca}",
            self.server_cert.display(),
            self.server_key.display()
        )
    }
}

/// What a TLS exchange saw.
pub struct TlsReply {
    /// Everything the server sent back, as text.
    pub text: String,
    /// The server's certificate chain, DER.
    pub certificates: Vec<Vec<u8>>,
    /// The ALPN protocol agreed, if any.
    pub alpn: Option<Vec<u8>>,
}

/// Connects to `addr` over TLS trusting only `ca` (with a client certificate and key when
/// given), writes `request`, and reads until the server closes.
pub async fn tls_exchange(
    addr: &str,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    request: &[u8],
) -> Result<TlsReply, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| e.to_string())?
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| e.to_string())?;
            builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(request).await.map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    // A server that refuses the client certificate says so in the first read.
    tls.read_to_end(&mut out).await.map_err(|e| format!("read: {e}"))?;
    let (_, session) = tls.get_ref();
    Ok(TlsReply {
        text: String::from_utf8_lossy(&out).into_owned(),
        certificates: session
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.to_vec()).collect())
            .unwrap_or_default(),
        alpn: session.alpn_protocol().map(<[u8]>::to_vec),
    })
}

/// Runs futures concurrently, in one task, and returns their outputs in order.
pub use futures_util::future::join_all;

/// The feature names of the shipped feature service `trust_scorer_v1` (features/), in its
/// order: trust-scorer's inputs, and the account facts transaction-review 1.1.0 reads.
pub fn trust_features() -> Vec<String> {
    let defs = invariant_featurestore::defs::Definitions::load_dir(&workspace_root().join("features"))
        .expect("the shipped feature repository");
    defs.service("trust_scorer_v1")
        .expect("feature service trust_scorer_v1")
        .features
        .iter()
        .map(|f| f.rsplit(':').next().unwrap_or(f).to_string())
        .collect()
}
