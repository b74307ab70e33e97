//! The rescue's verdicts on messages signed and sealed here, with keys made
//! by each test, over in-memory DNS.

use std::time::Duration;

use super::test_dkim::{SignOptions, TestKey, message};
use super::{Method, Settings, Verdict, verify};
use crate::dns::Zone;
use crate::dns::zone::{Entry, Slow};

fn settings(methods: &[Method], trusted: &[&str]) -> Settings {
    Settings {
        methods: methods.to_vec(),
        trusted_arc_sealers: trusted.iter().map(|s| s.to_string()).collect(),
        time_limit: Duration::from_secs(10),
    }
}

fn both(trusted: &[&str]) -> Settings {
    settings(&[Method::Dkim, Method::Arc], trusted)
}

fn zone_of(keys: &[&TestKey]) -> Zone {
    keys.iter().fold(Zone::new(), |zone, key| {
        zone.with_txt(&key.dns_name(), &key.dns_txt())
    })
}

fn author_message() -> Vec<u8> {
    message(
        "Alice <alice@example.org>",
        "bob@old-school.example",
        "forwarded",
        "Hello Bob,\nsee you tomorrow.\n",
    )
}

#[track_caller]
fn assert_rescued(verdict: &Verdict, text: &str) {
    match verdict {
        Verdict::Rescued(why) => assert_eq!(why, text),
        other => panic!("expected a rescue ({text}), got {other:?}"),
    }
}

#[track_caller]
fn assert_not_rescued(verdict: &Verdict, part: &str) {
    match verdict {
        Verdict::NotRescued(why) => assert!(why.contains(part), "{why:?} lacks {part:?}"),
        other => panic!("expected no rescue ({part}), got {other:?}"),
    }
}

#[track_caller]
fn assert_temporary(verdict: &Verdict, part: &str) {
    match verdict {
        Verdict::Temporary(why) => assert!(why.contains(part), "{why:?} lacks {part:?}"),
        other => panic!("expected a temporary failure ({part}), got {other:?}"),
    }
}

#[tokio::test]
async fn a_plain_forward_of_a_signed_message_is_rescued() {
    let key = TestKey::ed25519("example.org", "sel1");
    let signed = key.sign(&author_message());
    let verdict = verify(&zone_of(&[&key]), &both(&[]), &signed, Some("example.org")).await;
    assert_rescued(&verdict, "dkim d=example.org aligned with From");
}

#[tokio::test]
async fn an_rsa_signature_rescues_too() {
    let key = TestKey::rsa("example.org", "rsa", 1024);
    let signed = key.sign(&author_message());
    let verdict = verify(&zone_of(&[&key]), &both(&[]), &signed, None).await;
    assert_rescued(&verdict, "dkim d=example.org aligned with From");
}

#[tokio::test]
async fn a_changed_body_is_not_rescued() {
    let key = TestKey::ed25519("example.org", "sel1");
    let mut signed = key.sign(&author_message());
    signed.extend_from_slice(b"Buy now!\r\n");
    let verdict = verify(&zone_of(&[&key]), &both(&[]), &signed, Some("example.org")).await;
    assert_not_rescued(&verdict, "dkim d=example.org: body hash mismatch");
}

#[tokio::test]
async fn a_changed_signed_header_is_not_rescued() {
    let key = TestKey::ed25519("example.org", "sel1");
    let signed = key.sign(&author_message());
    let text = String::from_utf8(signed)
        .unwrap()
        .replace("Subject: forwarded", "Subject: urgent");
    let verdict = verify(&zone_of(&[&key]), &both(&[]), text.as_bytes(), None).await;
    assert_not_rescued(&verdict, "dkim d=example.org: signature does not verify");
}

#[tokio::test]
async fn an_unaligned_third_party_signature_is_not_rescued() {
    let key = TestKey::ed25519("esp.example", "s");
    let signed = key.sign(&author_message());
    let verdict = verify(&zone_of(&[&key]), &both(&[]), &signed, Some("example.org")).await;
    assert_not_rescued(
        &verdict,
        "dkim d=esp.example not aligned with From example.org or MAIL FROM example.org",
    );
}

#[tokio::test]
async fn an_unsigned_message_is_not_rescued() {
    let verdict = verify(
        &Zone::new(),
        &both(&[]),
        &author_message(),
        Some("example.org"),
    )
    .await;
    assert_eq!(
        verdict,
        Verdict::NotRescued("no DKIM signature; no ARC set".to_string())
    );
}

#[tokio::test]
async fn with_no_method_nothing_is_rescued() {
    let key = TestKey::ed25519("example.org", "sel1");
    let signed = key.sign(&author_message());
    let verdict = verify(&zone_of(&[&key]), &settings(&[], &[]), &signed, None).await;
    assert_not_rescued(&verdict, "no rescue method configured");
}

#[tokio::test]
async fn one_aligned_signature_among_several_rescues() {
    let third = TestKey::ed25519("esp.example", "s");
    let stale = TestKey::ed25519("example.org", "old");
    let author = TestKey::ed25519("example.org", "new");
    // Outermost first: a third party's, then a stale key of the author's
    // domain (revoked in DNS), then the good one.
    let signed = third.sign(&stale.sign(&author.sign(&author_message())));
    let zone = zone_of(&[&third, &author]).with_txt(&stale.dns_name(), "v=DKIM1; p=");
    let verdict = verify(&zone, &both(&[]), &signed, Some("example.org")).await;
    assert_rescued(&verdict, "dkim d=example.org aligned with From");
}

#[tokio::test]
async fn a_signature_aligned_with_mail_from_only_rescues_and_says_so() {
    let key = TestKey::ed25519("bounces.example.net", "s");
    let signed = key.sign(&author_message());
    let verdict = verify(&zone_of(&[&key]), &both(&[]), &signed, Some("example.net")).await;
    assert_rescued(
        &verdict,
        "dkim d=bounces.example.net aligned with MAIL FROM",
    );
}

#[tokio::test]
async fn alignment_follows_the_public_suffix_list() {
    let body = "Hi\n";
    let from_uk = message("a@example.co.uk", "b@example.net", "psl", body);
    let key = TestKey::ed25519("mail.example.co.uk", "s");
    let verdict = verify(&zone_of(&[&key]), &both(&[]), &key.sign(&from_uk), None).await;
    assert_rescued(&verdict, "dkim d=mail.example.co.uk aligned with From");

    // co.uk is a public suffix: example.co.uk and other.co.uk are two
    // organizations.
    let from_other = message("a@other.co.uk", "b@example.net", "psl", body);
    let key = TestKey::ed25519("example.co.uk", "s");
    let verdict = verify(&zone_of(&[&key]), &both(&[]), &key.sign(&from_other), None).await;
    assert_not_rescued(
        &verdict,
        "dkim d=example.co.uk not aligned with From other.co.uk",
    );
}

#[tokio::test]
async fn a_body_length_signature_is_never_accepted() {
    // The choice documented in src/rescue/dkim.rs: l= vouches for a prefix
    // only, so it rescues nothing, with or without appended text.
    let key = TestKey::ed25519("example.org", "sel1");
    let options = SignOptions {
        body_length: true,
        ..SignOptions::default()
    };
    let signed = key.sign_with(&author_message(), &options);
    assert!(String::from_utf8_lossy(&signed).contains(" l="));
    let zone = zone_of(&[&key]);
    let verdict = verify(&zone, &both(&[]), &signed, None).await;
    assert_not_rescued(&verdict, "Insecure 'l=' tag");
    let mut appended = signed.clone();
    appended.extend_from_slice(b"\r\nClick https://evil.test/\r\n");
    let verdict = verify(&zone, &both(&[]), &appended, None).await;
    assert_not_rescued(&verdict, "Insecure 'l=' tag");
}

#[tokio::test]
async fn a_lookup_outside_the_fetched_keys_fails_at_once() {
    // A failing signature with r=y (RFC 6651) makes mail-auth look up
    // _report._domainkey.<d>, a name spfmilter did not fetch: mail-auth's
    // own resolver has no name server, so the lookup fails at once (no
    // packet, no wait) and the verdict still comes.
    let key = TestKey::ed25519("example.org", "sel1");
    let options = SignOptions {
        reporting: true,
        ..SignOptions::default()
    };
    let signed = key.sign_with(&author_message(), &options);
    assert!(String::from_utf8_lossy(&signed).contains("r=y"));
    let changed = String::from_utf8(signed.clone())
        .unwrap()
        .replace("Subject: forwarded", "Subject: changed");
    let zone = zone_of(&[&key]);
    let guard = Duration::from_secs(60);
    let verdict = tokio::time::timeout(guard, verify(&zone, &both(&[]), changed.as_bytes(), None))
        .await
        .expect("no wait on a lookup outside spfmilter's DNS");
    assert_not_rescued(&verdict, "dkim d=example.org: signature does not verify");
    let verdict = tokio::time::timeout(guard, verify(&zone, &both(&[]), &signed, None))
        .await
        .expect("no wait on a lookup outside spfmilter's DNS");
    assert_rescued(&verdict, "dkim d=example.org aligned with From");

    let authenticator = super::keys::authenticator().unwrap();
    let direct = tokio::time::timeout(guard, authenticator.txt_raw_lookup("example.org."))
        .await
        .expect("no wait");
    assert!(direct.is_err(), "{direct:?}");
}

#[tokio::test]
async fn a_missing_or_revoked_key_fails_the_signature() {
    let key = TestKey::ed25519("example.org", "sel1");
    let signed = key.sign(&author_message());
    let verdict = verify(&Zone::new(), &both(&[]), &signed, None).await;
    assert_not_rescued(&verdict, "dkim d=example.org: no key (NXDOMAIN)");
    let revoked = Zone::new().with_txt(&key.dns_name(), "v=DKIM1; k=ed25519; p=");
    let verdict = verify(&revoked, &both(&[]), &signed, None).await;
    assert_not_rescued(&verdict, "dkim d=example.org: key revoked");
}

#[tokio::test]
async fn a_key_servfail_is_temporary() {
    let key = TestKey::ed25519("example.org", "sel1");
    let signed = key.sign(&author_message());
    let zone = Zone::new().with(&key.dns_name(), Entry::Timeout);
    let verdict = verify(&zone, &both(&[]), &signed, None).await;
    assert_temporary(
        &verdict,
        "dkim d=example.org: key sel1._domainkey.example.org",
    );
}

#[tokio::test]
async fn a_key_servfail_does_not_matter_when_another_signature_rescues() {
    let flaky = TestKey::ed25519("example.org", "flaky");
    let good = TestKey::ed25519("example.org", "good");
    let signed = flaky.sign(&good.sign(&author_message()));
    let zone = zone_of(&[&good]).with(&flaky.dns_name(), Entry::Timeout);
    let verdict = verify(&zone, &both(&[]), &signed, None).await;
    assert_rescued(&verdict, "dkim d=example.org aligned with From");
}

#[tokio::test(start_paused = true)]
async fn the_time_limit_makes_it_temporary() {
    let key = TestKey::ed25519("example.org", "sel1");
    let signed = key.sign(&author_message());
    // A DNS that answers after an hour; the paused clock jumps there.
    let never = Slow(zone_of(&[&key]), Duration::from_secs(3600));
    let verdict = verify(&never, &both(&[]), &signed, None).await;
    assert_temporary(&verdict, "time limit for key lookups reached");
}

#[tokio::test]
async fn several_from_fields_give_no_from_alignment() {
    let key = TestKey::ed25519("example.org", "sel1");
    let mut two_froms = b"From: mallory@evil.test\r\n".to_vec();
    two_froms.extend_from_slice(&author_message());
    let signed = key.sign(&two_froms);
    let verdict = verify(&zone_of(&[&key]), &both(&[]), &signed, Some("evil.test")).await;
    assert_not_rescued(
        &verdict,
        "dkim d=example.org not aligned with From (several From fields) or MAIL FROM evil.test",
    );
    let none = message("alice@example.org", "b@example.net", "x", "x\n");
    let none = String::from_utf8(none)
        .unwrap()
        .replace("From: alice@example.org\r\n", "");
    let signed = key.sign(none.as_bytes());
    let verdict = verify(&zone_of(&[&key]), &both(&[]), &signed, None).await;
    assert_not_rescued(&verdict, "From (no From field)");
}

/// A message signed by its author, then changed by a mailing list (subject
/// tag, footer: the author's signature breaks) and ARC-sealed by the list
/// after it verified the original.
async fn list_message(author: &TestKey, list: &TestKey) -> Vec<u8> {
    let original = author.sign(&author_message());
    let changed = String::from_utf8(original.clone())
        .unwrap()
        .replace("Subject: forwarded", "Subject: [club] forwarded")
        + "-- \r\nclub mailing list\r\n";
    list.arc_seal(changed.as_bytes(), &original, "lists.example", &[author])
        .await
}

#[tokio::test]
async fn a_mailing_list_change_under_a_trusted_sealer_is_rescued() {
    let author = TestKey::ed25519("example.org", "sel1");
    let list = TestKey::ed25519("lists.example", "arc");
    let sealed = list_message(&author, &list).await;
    let zone = zone_of(&[&author, &list]);
    // The author's own signature no longer verifies...
    let verdict = verify(
        &zone,
        &settings(&[Method::Dkim], &["lists.example"]),
        &sealed,
        None,
    )
    .await;
    assert_not_rescued(&verdict, "dkim d=example.org:");
    // ...the list's ARC vouches for it.
    let verdict = verify(
        &zone,
        &both(&["Lists.Example."]),
        &sealed,
        Some("example.org"),
    )
    .await;
    assert_rescued(
        &verdict,
        "arc sealed by lists.example (i=1) with dkim=pass header.d=example.org",
    );
}

#[tokio::test]
async fn the_same_sealer_untrusted_is_not_rescued() {
    let author = TestKey::ed25519("example.org", "sel1");
    let list = TestKey::ed25519("lists.example", "arc");
    let sealed = list_message(&author, &list).await;
    let zone = zone_of(&[&author, &list]);
    let verdict = verify(&zone, &both(&["other.example"]), &sealed, None).await;
    assert_not_rescued(&verdict, "arc sealer lists.example not trusted");
    let verdict = verify(
        &zone,
        &settings(&[Method::Dkim], &["lists.example"]),
        &sealed,
        None,
    )
    .await;
    assert_not_rescued(&verdict, "dkim d=example.org: body hash mismatch");
}

#[tokio::test]
async fn a_broken_chain_is_not_rescued() {
    let author = TestKey::ed25519("example.org", "sel1");
    let list = TestKey::ed25519("lists.example", "arc");
    let sealed = list_message(&author, &list).await;
    let zone = zone_of(&[&author, &list]);
    // Changed after the seal: the ARC-Message-Signature's body hash fails.
    let mut tampered = sealed.clone();
    tampered.extend_from_slice(b"P.S. send money\r\n");
    let verdict = verify(&zone, &both(&["lists.example"]), &tampered, None).await;
    assert_not_rescued(&verdict, "arc chain broken: ");
    // A set without its seal.
    let text = String::from_utf8(sealed).unwrap();
    let without_seal: String = remove_field(&text, "ARC-Seal");
    let verdict = verify(
        &zone,
        &both(&["lists.example"]),
        without_seal.as_bytes(),
        None,
    )
    .await;
    assert_not_rescued(&verdict, "arc chain broken: incomplete set");
    // The sealer's key replaced by another one.
    let impostor = TestKey::ed25519("lists.example", "arc");
    let zone = zone_of(&[&author, &impostor]);
    let verdict = verify(&zone, &both(&["lists.example"]), text.as_bytes(), None).await;
    assert_not_rescued(&verdict, "arc chain broken: signature does not verify");
}

#[tokio::test]
async fn an_arc_key_servfail_is_temporary() {
    let author = TestKey::ed25519("example.org", "sel1");
    let list = TestKey::ed25519("lists.example", "arc");
    let sealed = list_message(&author, &list).await;
    let zone = zone_of(&[&author]).with(&list.dns_name(), Entry::Timeout);
    let verdict = verify(&zone, &both(&["lists.example"]), &sealed, None).await;
    assert_temporary(&verdict, "arc: key arc._domainkey.lists.example");
}

#[tokio::test]
async fn a_trusted_seal_over_an_unaligned_pass_is_not_rescued() {
    // The list saw a valid signature, but by a third party, not the author.
    let third = TestKey::ed25519("esp.example", "s");
    let list = TestKey::ed25519("lists.example", "arc");
    let sealed = list_message(&third, &list).await;
    let zone = zone_of(&[&third, &list]);
    let verdict = verify(
        &zone,
        &both(&["lists.example"]),
        &sealed,
        Some("example.org"),
    )
    .await;
    assert_not_rescued(
        &verdict,
        "arc sealed by lists.example (i=1): no pass aligned with From example.org",
    );
}

/// `text` without the field `name` (and its continuation lines).
fn remove_field(text: &str, name: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.split_inclusive("\r\n") {
        if skipping && (line.starts_with(' ') || line.starts_with('\t')) {
            continue;
        }
        skipping = line
            .split_once(':')
            .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name));
        if !skipping {
            out.push_str(line);
        }
    }
    out
}

#[tokio::test]
async fn malformed_messages_get_a_verdict() {
    let key = TestKey::ed25519("example.org", "sel1");
    let zone = zone_of(&[&key]);
    let long_line = format!("X-Long: {}\r\n", "a".repeat(1 << 20));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("only a blank line", b"\r\n".to_vec()),
        ("no header", b"\r\njust a body\r\n".to_vec()),
        ("no colon", b"not a header\r\n\r\nbody".to_vec()),
        (
            "1 MB header line",
            [long_line.as_bytes(), &author_message()].concat(),
        ),
        (
            "bare LF",
            author_message()
                .iter()
                .copied()
                .filter(|&b| b != b'\r')
                .collect(),
        ),
        (
            "8-bit",
            [
                b"Subject: \xff\xfe caf\xc3\xa9\r\n".as_slice(),
                &author_message(),
            ]
            .concat(),
        ),
        (
            "broken MIME",
            message(
                "a@example.org",
                "b@example.net",
                "mime",
                "--b\nContent-Type: text/plain; boundary=\"\n--b--\n--",
            )
            .into_iter()
            .chain(*b"Content-Type: multipart/mixed; boundary=")
            .collect(),
        ),
        (
            "broken DKIM-Signature",
            [
                b"DKIM-Signature: v=1; a=rsa-sha256; d=\r\n".as_slice(),
                &author_message(),
            ]
            .concat(),
        ),
        (
            "broken ARC-Seal",
            [b"ARC-Seal: i=x; cv=maybe\r\n".as_slice(), &author_message()].concat(),
        ),
        (
            "NUL bytes",
            [b"From: a\0@example.org\r\n\r\n\0\0".as_slice()].concat(),
        ),
    ];
    for (what, input) in cases {
        let verdict = verify(
            &zone,
            &both(&["lists.example"]),
            &input,
            Some("example.org"),
        )
        .await;
        assert!(
            matches!(verdict, Verdict::NotRescued(_)),
            "{what}: {verdict:?}"
        );
    }
}

#[tokio::test]
async fn mangled_signed_messages_never_panic() {
    // Every byte position of a signed, sealed message overwritten with a
    // few bytes that matter to parsers, and every prefix: a verdict each,
    // never a panic, never a temporary failure (the DNS answers all).
    let author = TestKey::ed25519("example.org", "sel1");
    let list = TestKey::ed25519("lists.example", "arc");
    let sealed = list_message(&author, &list).await;
    let zone = zone_of(&[&author, &list]);
    let settings = both(&["lists.example"]);
    let mut checked = 0;
    for pos in (0..sealed.len()).step_by(7) {
        for byte in [b'\n', b':', b';', b'=', b'(', 0xff] {
            let mut mangled = sealed.clone();
            mangled[pos] = byte;
            let verdict = verify(&zone, &settings, &mangled, Some("example.org")).await;
            assert!(
                !matches!(verdict, Verdict::Temporary(_)),
                "{pos} {byte}: {verdict:?}"
            );
            checked += 1;
        }
        let verdict = verify(&zone, &settings, &sealed[..pos], Some("example.org")).await;
        assert!(
            !matches!(verdict, Verdict::Temporary(_)),
            "prefix {pos}: {verdict:?}"
        );
    }
    assert!(checked > 500);
}

mod prop {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn arbitrary_bytes_are_never_rescued(
            head in proptest::collection::vec(
                prop_oneof![
                    Just(&b"DKIM-Signature: v=1; a=ed25519-sha256; d=example.org; s=s; h=from; bh=; b=\r\n"[..]),
                    Just(&b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=lists.example; s=arc; b=\r\n"[..]),
                    Just(&b"ARC-Authentication-Results: i=1; lists.example; dkim=pass header.d=example.org\r\n"[..]),
                    Just(&b"From: a@example.org\r\n"[..]),
                    Just(&b"\r\n"[..]),
                    Just(&b" \t\r\n"[..]),
                ],
                0..8,
            ),
            tail in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let input: Vec<u8> = head.concat().into_iter().chain(tail).collect();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let zone = Zone::new().with_txt("s._domainkey.example.org", "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=");
            let verdict = runtime.block_on(verify(&zone, &both(&["lists.example"]), &input, Some("example.org")));
            prop_assert!(!matches!(verdict, Verdict::Rescued(_)), "{:?}", verdict);
        }
    }
}

#[tokio::test]
async fn a_two_set_chain_is_judged_by_its_newest_set() {
    let author = TestKey::ed25519("example.org", "sel1");
    let first = TestKey::ed25519("relay.example", "arc");
    let second = TestKey::ed25519("fwd.example", "arc");
    let signed = author.sign(&author_message());
    let once = first
        .arc_seal(&signed, &signed, "relay.example", &[&author])
        .await;
    let twice = second
        .arc_seal(&once, &once, "fwd.example", &[&author, &first])
        .await;
    assert!(String::from_utf8_lossy(&twice).contains("cv=pass"));
    let arc_only = settings(&[Method::Arc], &["fwd.example"]);
    let zone = zone_of(&[&author, &first, &second]);
    let verdict = verify(&zone, &arc_only, &twice, None).await;
    assert_rescued(
        &verdict,
        "arc sealed by fwd.example (i=2) with dkim=pass header.d=example.org",
    );
    // Trusting only the first sealer is not enough: the newest set counts.
    let verdict = verify(
        &zone,
        &settings(&[Method::Arc], &["relay.example"]),
        &twice,
        None,
    )
    .await;
    assert_not_rescued(&verdict, "arc sealer fwd.example not trusted");
    // The older seal must verify too (RFC 8617 §5.2: every ARC-Seal).
    let impostor = TestKey::ed25519("relay.example", "arc");
    let zone = zone_of(&[&author, &impostor, &second]);
    let verdict = verify(&zone, &arc_only, &twice, None).await;
    assert_not_rescued(&verdict, "arc chain broken: signature does not verify");
}
