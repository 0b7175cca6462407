//! The command line of the `shardmq` binary: subcommands, `check-config` output and errors.
//! None of these start the broker, so they need no io_uring.

use std::path::PathBuf;
use std::process::{Command, Output};

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("shardmq-cli-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn shardmq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the shardmq binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const CONFIG: &str = r#"
listen = ["127.0.0.1:1883"]
shards = 2

[[listener]]
address = "127.0.0.1:1884"
max_connections = 500
name = "internal"
"#;

#[test]
fn check_config_prints_every_key() {
    let dir = TempDir::new("print");
    let path = dir.file("broker.toml", CONFIG);
    let out = shardmq(&[
        "check-config",
        "--config",
        path.to_str().unwrap(),
        "--max-inflight",
        "64",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let table: toml::Table = stdout.parse().expect("check-config prints valid TOML");

    // From the file.
    assert_eq!(table["shards"].as_integer(), Some(2));
    assert_eq!(table["listen"].as_array().unwrap().len(), 1);
    assert_eq!(table["listen"][0].as_str(), Some("127.0.0.1:1883"));
    let listeners = table["listener"].as_array().expect("the listener tables");
    assert_eq!(listeners.len(), 1);
    assert_eq!(listeners[0]["address"].as_str(), Some("127.0.0.1:1884"));
    assert_eq!(listeners[0]["max_connections"].as_integer(), Some(500));
    assert_eq!(listeners[0]["name"].as_str(), Some("internal"));
    // Defaults filled in, the listener's own included.
    assert_eq!(listeners[0]["protocol"].as_str(), Some("mqtt"));
    assert_eq!(table["max_queued_messages"].as_integer(), Some(1000));
    assert_eq!(table["log_level"].as_str(), Some("info"));
    assert_eq!(
        table["shared_subscription_strategy"].as_str(),
        Some("round_robin")
    );
    // The flag overrides the default.
    assert_eq!(table["max_inflight"].as_integer(), Some(64));
    // Unset optional keys are comments.
    assert!(stdout.contains("# cpus: unset"), "{stdout}");

    // The printed configuration is a valid config file that means the same.
    let again = dir.file("again.toml", &stdout);
    let out = shardmq(&["check-config", "--config", again.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), stdout);
}

#[test]
fn check_config_without_file_shows_the_defaults() {
    let out = shardmq(&["check-config"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains("max_inflight = 512"), "{stdout}");
    let table: toml::Table = stdout.parse().unwrap();
    // Loopback only by default.
    assert_eq!(table["listen"][0].as_str(), Some("127.0.0.1:1883"));
    assert_eq!(table["listen"][1].as_str(), Some("[::1]:1883"));
    assert_eq!(table["max_keepalive"].as_integer(), Some(65535));
    assert!(stdout.contains("# password_file: unset"), "{stdout}");
    assert_eq!(table["listener"].as_array().map(Vec::len), Some(0));
    assert_eq!(table["max_packet_size"].as_integer(), Some(1 << 20));
}

#[test]
fn check_config_with_only_listener_tables_has_no_default_listen() {
    let dir = TempDir::new("tables");
    let path = dir.file(
        "broker.toml",
        "[[listener]]\naddress = \"127.0.0.1:1884\"\n",
    );
    let out = shardmq(&["check-config", "--config", path.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!stdout.contains("127.0.0.1:1883"), "{stdout}");
    let table: toml::Table = stdout.parse().unwrap();
    assert_eq!(table["listen"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        table["listener"][0]["address"].as_str(),
        Some("127.0.0.1:1884")
    );
}

#[test]
fn check_config_refuses_an_unknown_key() {
    let dir = TempDir::new("unknown");
    let path = dir.file(
        "broker.toml",
        "max_inflight = 5\n\n[[listener]]\naddress = \"127.0.0.1:1884\"\nmax_conections = 5\n",
    );
    let out = shardmq(&["check-config", "--config", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(stderr.contains("max_conections"), "{stderr}");
    assert!(stderr.contains("broker.toml"), "{stderr}");
    assert!(stderr.contains("line 5"), "{stderr}");

    let path = dir.file("top.toml", "max_infligt = 5\n");
    let out = shardmq(&["check-config", "--config", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("max_infligt"), "{stderr}");
    assert!(stderr.contains("line 1"), "{stderr}");
}

#[test]
fn check_config_refuses_invalid_settings() {
    let dir = TempDir::new("invalid");
    let path = dir.file(
        "broker.toml",
        "listen = [\"127.0.0.1:1884\"]\n[[listener]]\naddress = \"127.0.0.1:1884\"\n",
    );
    let out = shardmq(&["check-config", "--config", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("127.0.0.1:1884"), "{stderr}");

    let out = shardmq(&["check-config", "--max-inflight", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("max_inflight"));

    let out = shardmq(&["check-config", "--config", "/nonexistent/shardmq.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/shardmq.toml"));
}

#[test]
fn help_lists_the_subcommands() {
    let out = shardmq(&["--help"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for word in ["serve", "check-config", "passwd", "--listen", "--config"] {
        assert!(stdout.contains(word), "{word} missing from:\n{stdout}");
    }
    let out = shardmq(&["check-config", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("--config"));
}

#[test]
fn flags_and_a_subcommand_do_not_mix() {
    let out = shardmq(&["--shards", "2", "check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let out = shardmq(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
}

/// The sample configuration shipped in `packaging/` is valid and mentions every key the broker
/// knows (test hooks aside), so operators find each setting there.
#[test]
fn packaged_sample_config_is_valid_and_complete() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/shardmq.toml");
    let out = shardmq(&["check-config", "--config", sample]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let defaults = shardmq(&["check-config"]);
    let sample_text = std::fs::read_to_string(sample).unwrap();
    for line in text(&defaults.stdout).lines() {
        let key = line
            .trim_start_matches("# ")
            .split([' ', '=', ':'])
            .next()
            .unwrap_or_default();
        if key.is_empty() || key == "per_shard_listeners" {
            continue;
        }
        assert!(
            sample_text.contains(key),
            "packaging/shardmq.toml does not mention `{key}`"
        );
    }
}
