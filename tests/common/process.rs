//! Running the real `gatehouse` binary as a child process (for CLI, signal and multi-node tests).

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

pub fn gatehouse(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_remove("GATEHOUSE_CONFIG")
        .env("GATEHOUSE_LISTEN", "127.0.0.1:0")
        .env("GATEHOUSE_LOG_FORMAT", "json");
    cmd
}

/// A started server process, with its address read from its "listening" log line.
pub struct Process {
    pub child: Child,
    pub addr: String,
    pub stdout: mpsc::Receiver<String>,
    pub stderr: mpsc::Receiver<String>,
}

fn lines(reader: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

pub fn spawn(mut cmd: Command) -> Process {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gatehouse");
    let stdout = lines(child.stdout.take().unwrap());
    let stderr = lines(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    let addr = loop {
        let line = stderr
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no 'listening' line; stderr so far: {seen:#?}"));
        let parsed: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("log line is not JSON: {line}"));
        if parsed["fields"]["message"] == "gatehouse listening" {
            break parsed["fields"]["address"].as_str().unwrap().to_string();
        }
        seen.push(line);
    };
    Process {
        child,
        addr,
        stdout,
        stderr,
    }
}

impl Process {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A JSON request to this server, with a bearer `token` when given: the answer's status and
    /// JSON body (`Null` when it has none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = reqwest::Client::new().request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req.send().await.expect("the server answers");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or_default())
    }

    /// The bootstrap admin's password, read from the lines the first start prints to stdout.
    pub fn bootstrap_password(&self) -> String {
        loop {
            let line = self
                .stdout
                .recv_timeout(Duration::from_secs(10))
                .expect("the bootstrap admin's password on stdout");
            if let Some(password) = line.trim_start().strip_prefix("password:") {
                return password.trim().to_string();
            }
        }
    }

    /// Waits for the process to exit (after a signal sent elsewhere).
    pub fn terminate_wait(mut self) -> (std::process::ExitStatus, Vec<String>, Vec<String>) {
        let status = self.child.wait().unwrap();
        let logs = self.stderr.iter().collect();
        let stdout = self.stdout.iter().collect();
        (status, logs, stdout)
    }

    /// Sends SIGTERM and waits for the exit status; returns it with the log lines and the
    /// stdout lines not yet read.
    pub fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>, Vec<String>) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        // The reader threads end with the process's pipes.
        let logs = self.stderr.iter().collect();
        let stdout = self.stdout.iter().collect();
        (status, logs, stdout)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}
