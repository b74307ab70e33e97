//! `spfmilter check` and `spfmilter expand` as an admin runs them: the real
//! binary, asking a real DNS server on loopback given with --nameserver.

mod common;

use std::process::{Command, Output};
use std::sync::Arc;

use common::dns_server::TestDnsServer;
use serde_json::Value;
use spfmilter::dns::Zone;

fn zone() -> Zone {
    Zone::new()
        .with_txt("mail.example.test", "v=spf1 a -all")
        .with_ip("mail.example.test", "192.0.2.10")
        .with_txt(
            "example.test",
            "v=spf1 include:_spf.example.test -all exp=why.example.test",
        )
        .with_txt("_spf.example.test", "v=spf1 ip4:198.51.100.0/24 mx -all")
        .with_mx("_spf.example.test", 10, "mx.example.test")
        .with_ip("mx.example.test", "203.0.113.5")
        .with_ip("mx.example.test", "2001:db8::5")
        .with_txt("why.example.test", "%{i} is not a mail server of %{d}")
        .with_txt("broken.test", "v=spf1 ip4:300.1.1.1 -all")
        .with_txt(
            "spam.test",
            "v=spf1 include:_a.spam.test include:_b.spam.test exists:%{i}.x.spam.test ~all",
        )
        .with_txt("_a.spam.test", "v=spf1 ip4:45.120.196.0/23")
        .with_txt(
            "_b.spam.test",
            "v=spf1 ip4:45.120.198.0/23 ip6:2001:db8:bad::/48",
        )
}

fn spfmilter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spfmilter"))
        .args(args)
        .output()
        .expect("run spfmilter")
}

fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

#[test]
fn check_json_reports_both_identities_one_object_per_line() {
    let server = TestDnsServer::start(Arc::new(zone()));
    let ns = server.addr().to_string();
    let out = spfmilter(&[
        "check",
        "--ip",
        "192.0.2.10",
        "--helo",
        "mail.example.test",
        "--sender",
        "alice@example.test",
        "--nameserver",
        &ns,
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);

    let helo = &lines[0];
    assert_eq!(helo["identity"], "helo");
    assert_eq!(helo["result"], "pass");
    assert_eq!(helo["mechanism"], "+a");
    assert_eq!(helo["domain"], "mail.example.test");
    assert_eq!(helo["dns_lookups"], 1);
    assert_eq!(helo["problem"], Value::Null);
    assert_eq!(helo["explanation"], Value::Null);

    let mailfrom = &lines[1];
    assert_eq!(mailfrom["identity"], "mailfrom");
    assert_eq!(mailfrom["result"], "fail");
    assert_eq!(mailfrom["mechanism"], "-all");
    assert_eq!(mailfrom["domain"], "example.test");
    assert_eq!(
        mailfrom["explanation"],
        "192.0.2.10 is not a mail server of example.test"
    );
    // include + mx inside it.
    assert_eq!(mailfrom["dns_lookups"], 2);
    assert_eq!(mailfrom["void_lookups"], 0);
    for key in [
        "identity",
        "result",
        "mechanism",
        "explanation",
        "problem",
        "domain",
        "dns_lookups",
        "void_lookups",
    ] {
        assert!(mailfrom.get(key).is_some(), "key {key} missing");
    }
}

#[test]
fn check_passes_through_include_and_mx_and_reports_errors() {
    let server = TestDnsServer::start(Arc::new(zone()));
    let ns = server.addr().to_string();
    let out = spfmilter(&[
        "check",
        "--ip",
        "2001:db8::5",
        "--sender",
        "bob@example.test",
        "--identity",
        "mailfrom",
        "--nameserver",
        &ns,
        "--format",
        "json",
    ]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["result"], "pass");
    assert_eq!(lines[0]["mechanism"], "+include:_spf.example.test");

    let out = spfmilter(&[
        "check",
        "--ip",
        "192.0.2.1",
        "--sender",
        "x@broken.test",
        "--identity",
        "mailfrom",
        "--nameserver",
        &ns,
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "an SPF error is not a command error");
    let line = &json_lines(&out)[0];
    assert_eq!(line["result"], "permerror");
    assert!(
        line["problem"].as_str().unwrap().contains("ip4:300.1.1.1"),
        "{line}"
    );
    assert_eq!(line["mechanism"], Value::Null);
}

#[test]
fn null_sender_is_checked_as_postmaster_at_helo() {
    let server = TestDnsServer::start(Arc::new(zone()));
    let ns = server.addr().to_string();
    let out = spfmilter(&[
        "check",
        "--ip",
        "192.0.2.99",
        "--helo",
        "mail.example.test",
        "--sender",
        "",
        "--identity",
        "mailfrom",
        "--nameserver",
        &ns,
        "--format",
        "json",
    ]);
    let line = &json_lines(&out)[0];
    assert_eq!(line["result"], "fail");
    assert_eq!(line["sender"], "postmaster@mail.example.test");
}

#[test]
fn check_text_with_trace_shows_the_steps() {
    let server = TestDnsServer::start(Arc::new(zone()));
    let ns = server.addr().to_string();
    let out = spfmilter(&[
        "check",
        "--ip",
        "203.0.113.5",
        "--sender",
        "carol@example.test",
        "--identity",
        "mailfrom",
        "--nameserver",
        &ns,
        "--trace",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "# mailfrom trace",
        "TXT example.test: \"v=spf1 include:_spf.example.test -all exp=why.example.test\"",
        "MX _spf.example.test: [\"mx.example.test\"]",
        "A mx.example.test: [203.0.113.5]",
        "+mx: match",
        "+include:_spf.example.test: match",
        "mailfrom: pass (domain example.test, sender carol@example.test)",
        "  mechanism: +include:_spf.example.test",
        "  dns lookups: 2, void lookups: 0",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn usage_and_setup_errors_exit_non_zero() {
    let out = spfmilter(&["check", "--ip", "not-an-ip", "--sender", "a@b.test"]);
    assert_eq!(out.status.code(), Some(2), "usage error");
    let out = spfmilter(&["check", "--ip", "192.0.2.1", "--identity", "mailfrom"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sender is required"));
    let out = spfmilter(&[
        "check",
        "--ip",
        "192.0.2.1",
        "--sender",
        "a@b.test",
        "--nameserver",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(2), "port 0 is refused");
}

#[test]
fn expand_prints_a_postfix_cidr_table_for_an_include_chain() {
    let server = TestDnsServer::start(Arc::new(zone()));
    let ns = server.addr().to_string();
    let out = spfmilter(&[
        "expand",
        "spam.test",
        "--nameserver",
        &ns,
        "--format",
        "postfix-cidr",
    ]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rules: Vec<&str> = stdout.lines().filter(|l| !l.starts_with('#')).collect();
    // 45.120.196.0/23 + 45.120.198.0/23 merge into one /22.
    assert_eq!(
        rules,
        ["45.120.196.0/22 REJECT", "2001:db8:bad::/48 REJECT"]
    );
    assert!(stdout.contains(
        "# warning: spam.test: +exists:%{i}.x.spam.test depends on the connecting client"
    ));
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: spam.test: +exists"));

    let out = spfmilter(&["expand", "spam.test", "--nameserver", &ns]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "45.120.196.0/22\n2001:db8:bad::/48\n"
    );
}

// ------------------------------------------------- README: blocking an operator

/// The operator of the README's worked example: its existing domain
/// `toramaki.test` and a new one, `kazeno.test`, both delegating to the
/// operator's include, which lists its networks (documentation ranges,
/// RFC 5737 and RFC 3849); and a legitimate sender.
fn operator_zone() -> Zone {
    Zone::new()
        .with_txt(
            "toramaki.test",
            "v=spf1 include:spf-stx.burn-oxygen.test -all",
        )
        .with_txt(
            "spf-stx.burn-oxygen.test",
            "v=spf1 ip4:198.51.100.0/24 ip4:203.0.113.0/25 ip6:2001:db8:5a::/48 -all",
        )
        .with_txt(
            "kazeno.test",
            "v=spf1 include:spf-stx.burn-oxygen.test ~all",
        )
        .with_txt("example.test", "v=spf1 ip4:192.0.2.0/24 -all")
}

/// The `console` blocks of README.md between the block-example markers:
/// each `$ spfmilter …` command with the output shown under it.
fn readme_commands() -> Vec<(Vec<String>, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let (_, rest) = readme
        .split_once("<!-- block-example -->")
        .expect("README.md has the block example");
    let (example, _) = rest
        .split_once("<!-- /block-example -->")
        .expect("the block example ends");
    let mut commands: Vec<(Vec<String>, String)> = Vec::new();
    let mut in_console = false;
    for line in example.lines() {
        if line.starts_with("```console") {
            in_console = true;
        } else if line.starts_with("```") {
            in_console = false;
        } else if in_console {
            if let Some(command) = line.strip_prefix("$ spfmilter ") {
                let words = command.split_whitespace().map(str::to_owned).collect();
                commands.push((words, String::new()));
            } else if let Some((_, output)) = commands.last_mut() {
                output.push_str(line);
                output.push('\n');
            }
        }
    }
    commands
}

#[test]
fn readme_block_example_reproduces() {
    let server = TestDnsServer::start(Arc::new(operator_zone()));
    let ns = server.addr().to_string();
    let commands = readme_commands();
    assert!(commands.len() >= 3, "{commands:?}");
    for (words, shown) in commands {
        let mut args: Vec<&str> = words.iter().map(String::as_str).collect();
        args.extend(["--nameserver", &ns]);
        let out = spfmilter(&args);
        assert!(out.status.success(), "{words:?}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            shown,
            "README.md shows another output for spfmilter {}",
            words.join(" ")
        );
    }
}

#[test]
fn check_reads_the_block_rules_of_the_readme_config_and_traces_them() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let (_, example) = readme
        .split_once("<!-- block-example -->")
        .expect("the block example");
    let (_, toml) = example.split_once("```toml\n").expect("a toml block");
    let (toml, _) = toml.split_once("```").expect("the toml block ends");
    let dir = std::env::temp_dir().join(format!("spfmilter-cli-block-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let path = dir.join("spfmilter.toml");
    std::fs::write(&path, toml).expect("write the config");
    let server = TestDnsServer::start(Arc::new(operator_zone()));
    let ns = server.addr().to_string();
    let config = path.to_string_lossy().into_owned();
    let run = |ip: &str, extra: &[&str]| {
        let mut args = vec![
            "check",
            "--ip",
            ip,
            "--sender",
            "news@kazeno.test",
            "--identity",
            "mailfrom",
            "--config",
            &config,
            "--nameserver",
            &ns,
        ];
        args.extend_from_slice(extra);
        spfmilter(&args)
    };
    // includes_test = true: includes only watches; authorized_by refuses.
    let out = run("198.51.100.20", &["--trace"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("block includes spf-stx.burn-oxygen.test: fires (test mode: would block)"),
        "{text}"
    );
    assert!(
        text.contains("block authorized_by spf-stx.burn-oxygen.test: fires\n"),
        "{text}"
    );
    // --trace: the authorized_by evaluation, step by step.
    assert!(
        text.contains("# block authorized_by spf-stx.burn-oxygen.test trace\n"),
        "{text}"
    );
    assert!(
        text.contains("identity mailfrom: <sender>=postmaster@spf-stx.burn-oxygen.test"),
        "{text}"
    );
    // From outside the operator's networks: the include was still entered
    // before ~all (a watched match), authorized_by does not fire.
    let out = run("192.0.2.25", &["--format", "json"]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["result"], "softfail");
    assert_eq!(lines[0]["via"][0], "spf-stx.burn-oxygen.test");
    let rules = &lines[1]["block"]["rules"];
    assert_eq!(rules[0]["rule"], "includes");
    assert_eq!(rules[0]["fires"], true);
    assert_eq!(rules[0]["test"], true);
    assert_eq!(rules[1]["rule"], "authorized_by");
    assert_eq!(rules[1]["fires"], false);
    assert_eq!(lines[1]["block"]["reply"], Value::Null);
    let _ = std::fs::remove_dir_all(&dir);
}
