//! What a connection asks of the MTA in its OPTNEG reply, all in one
//! place: the actions, the protocol steps and whether the MTA waits for
//! their replies, and the macros per stage. Each depends on the
//! configuration the connection starts with.
//!
//! Every step the MTA sends costs a packet; every step it waits for costs
//! a round trip (the MTA writes, the milter wakes, answers, the MTA
//! wakes). So a step is asked for only when the configuration uses what it
//! carries, and a reply only where the answer can be other than "go on":
//!
//! | step | asked for | reply awaited |
//! |---|---|---|
//! | connect | always (the client's address; `j`) | no (`SMFIP_NR_CONN`) |
//! | HELO | always (the HELO identity) | no (`SMFIP_NR_HELO`) |
//! | MAIL FROM | always (the check) | yes: reject or defer here |
//! | RCPT TO | unless `hide_receiver` (the first recipient names the receiver) | no (`SMFIP_NR_RCPT`) |
//! | DATA, end of headers, unknown commands | never | — |
//! | headers | with `remove_forged_headers` (forged trace headers) or the rescue (a held message is kept whole) | no (`SMFIP_NR_HDR`) |
//! | body | with the rescue (`[rescue] methods`), SMFIS_SKIP answered to the first chunk of a message not held | yes |
//! | end of message | always (the header edits) | yes |
//!
//! A reply flag is asked only if the MTA offers it (Postfix offers all
//! since protocol version 6); otherwise the step is answered as before.
//! With the rescue on, SMFIP_SKIP (stop sending the body of a message not
//! held) and SMFIP_HDR_LEADSPC (header values as received, to rebuild a
//! held message byte for byte) are asked for too, if offered.
//! The answers those steps could give other than "go on" come only from
//! an internal error (`on_internal_error`), which the adapter gives at the
//! next step the MTA waits for ([`super::Connection`]).

use std::ffi::CString;

use indymilter::{Actions, MacroStage, ProtoOpts};

use crate::config::Config;
use crate::session::Stage;

/// The actions: headers inserted (ours) and deleted (forged ones).
pub const ACTIONS: Actions = Actions::ADD_HEADER.union(Actions::CHANGE_HEADER);

/// The protocol options to ask for, of those the MTA `offered`.
pub fn protocol(config: &Config, offered: ProtoOpts) -> ProtoOpts {
    // Steps spfmilter has no use for in any configuration (it has no
    // callback for them either).
    let mut opts = ProtoOpts::NO_DATA | ProtoOpts::NO_EOH | ProtoOpts::NO_UNKNOWN;
    let rescue = config.rescue_on();
    if !rescue {
        opts |= ProtoOpts::NO_BODY;
    }
    // Steps only some configurations use, and the replies not needed.
    let mut optional = ProtoOpts::NOREPLY_CONNECT | ProtoOpts::NOREPLY_HELO;
    if config.milter.hide_receiver {
        optional |= ProtoOpts::NO_RCPT;
    } else {
        optional |= ProtoOpts::NOREPLY_RCPT;
    }
    if config.milter.remove_forged_headers || rescue {
        optional |= ProtoOpts::NOREPLY_HEADER;
    } else {
        optional |= ProtoOpts::NO_HEADER;
    }
    // SKIP: offered, taken (answered only with the rescue on).
    optional |= ProtoOpts::SKIP;
    if rescue {
        optional |= ProtoOpts::LEADING_SPACE;
    }
    opts |= optional & offered;
    opts
}

/// Whether the MTA waits for a reply at `stage`, given the options
/// negotiated.
pub fn awaits_reply(opts: ProtoOpts, stage: Stage) -> bool {
    let no_reply = match stage {
        Stage::Connect => ProtoOpts::NOREPLY_CONNECT,
        Stage::Helo => ProtoOpts::NOREPLY_HELO,
        Stage::Rcpt => ProtoOpts::NOREPLY_RCPT,
        Stage::Header => ProtoOpts::NOREPLY_HEADER,
        Stage::Mail | Stage::Body | Stage::EndOfMessage => return true,
        // The protocol has no reply to an abort.
        Stage::Abort => return false,
    };
    !opts.contains(no_reply)
}

/// The milter macros a connection asks the MTA for, per stage. Asking
/// replaces Postfix's default list of that stage (`milter_*_macros`), so
/// every macro used is named: `j` (the authserv-id), `i` (the queue ID,
/// for the log), `{auth_authen}` (the SMTP AUTH skip) and the macros of
/// `MacroList`.
pub fn requested_macros(config: &Config) -> [(MacroStage, CString); 3] {
    let mut mail = String::from("i {auth_authen}");
    for rule in &config.skip.macro_list {
        mail.push(' ');
        mail.push_str(&macro_request_name(&rule.name));
    }
    let c = |s: String| CString::new(s).unwrap_or_default();
    [
        (MacroStage::Connect, c("j".to_owned())),
        (MacroStage::Mail, c(mail)),
        (MacroStage::Eom, c("i".to_owned())),
    ]
}

/// Sendmail macro names: one character bare (`j`), longer ones in braces
/// (`{daemon_name}`).
pub fn macro_request_name(name: &str) -> String {
    if name.chars().count() == 1 {
        name.to_owned()
    } else {
        format!("{{{name}}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MacroRule;

    #[test]
    fn macro_lists_name_what_is_used_one_letter_bare_longer_in_braces() {
        let mut config = Config::default();
        config.skip.macro_list = vec![
            MacroRule::parse("daemon_name|mx-in").unwrap(),
            MacroRule::parse("{auth_type}").unwrap(),
            MacroRule::parse("_").unwrap(),
        ];
        let lists = requested_macros(&config);
        let list = |stage| {
            lists
                .iter()
                .find(|(s, _)| *s == stage)
                .map(|(_, l)| l.to_str().unwrap().to_owned())
        };
        assert_eq!(list(MacroStage::Connect).as_deref(), Some("j"));
        assert_eq!(
            list(MacroStage::Mail).as_deref(),
            Some("i {auth_authen} {daemon_name} {auth_type} _")
        );
        assert_eq!(list(MacroStage::Eom).as_deref(), Some("i"));
    }

    /// Postfix 3.7's offer (every step and reply flag, milter_protocol 6).
    const POSTFIX: u32 = 0x1f_ffff;

    #[test]
    fn replies_are_asked_only_where_the_answer_can_be_other_than_go_on() {
        let offered = ProtoOpts::from_bits_retain(POSTFIX);
        let opts = protocol(&Config::default(), offered);
        // Every step of a message that carries something used: connect,
        // HELO, MAIL, RCPT (the receiver), headers (forged ones), EOM.
        for off in [
            ProtoOpts::NO_CONNECT,
            ProtoOpts::NO_HELO,
            ProtoOpts::NO_MAIL,
            ProtoOpts::NO_RCPT,
            ProtoOpts::NO_HEADER,
        ] {
            assert!(!opts.contains(off), "{off:?} in {opts:?}");
        }
        for off in [
            ProtoOpts::NO_DATA,
            ProtoOpts::NO_EOH,
            ProtoOpts::NO_BODY,
            ProtoOpts::NO_UNKNOWN,
        ] {
            assert!(opts.contains(off), "{off:?} not in {opts:?}");
        }
        // Replies: only MAIL FROM and end of message decide.
        for stage in [Stage::Connect, Stage::Helo, Stage::Rcpt, Stage::Header] {
            assert!(!awaits_reply(opts, stage), "{stage}");
        }
        for stage in [Stage::Mail, Stage::EndOfMessage] {
            assert!(awaits_reply(opts, stage), "{stage}");
        }
        assert!(!opts.contains(ProtoOpts::NOREPLY_MAIL));
        // Nothing asked that was not offered.
        assert!(offered.contains(opts));
    }

    #[test]
    fn steps_a_configuration_does_not_use_are_not_asked_for() {
        let offered = ProtoOpts::from_bits_retain(POSTFIX);
        let mut config = Config::default();
        config.milter.hide_receiver = true;
        config.milter.remove_forged_headers = false;
        let opts = protocol(&config, offered);
        assert!(opts.contains(ProtoOpts::NO_RCPT | ProtoOpts::NO_HEADER));
        assert!(!opts.intersects(ProtoOpts::NOREPLY_RCPT | ProtoOpts::NOREPLY_HEADER));
    }

    #[test]
    fn an_mta_that_offers_no_reply_flags_gets_replies_as_before() {
        // An MTA that offers the step flags only.
        let offered = ProtoOpts::from_bits_retain(0x7f);
        let opts = protocol(&Config::default(), offered);
        for stage in [Stage::Connect, Stage::Helo, Stage::Rcpt, Stage::Header] {
            assert!(awaits_reply(opts, stage), "{stage}");
        }
        assert!(!opts.contains(ProtoOpts::SKIP));
    }

    /// With the rescue on, the body (each chunk answered: SMFIS_SKIP for a
    /// message not held), SMFIP_SKIP and SMFIP_HDR_LEADSPC, and the headers
    /// even without `remove_forged_headers`; with it off, none of these.
    #[test]
    fn the_body_is_asked_for_only_with_the_rescue_on() {
        let offered = ProtoOpts::from_bits_retain(POSTFIX);
        let off = protocol(&Config::default(), offered);
        assert!(off.contains(ProtoOpts::NO_BODY));
        assert!(!off.contains(ProtoOpts::LEADING_SPACE));
        let mut config = Config::default();
        config.rescue.methods = vec![crate::rescue::Method::Dkim];
        config.milter.remove_forged_headers = false;
        let on = protocol(&config, offered);
        assert!(!on.contains(ProtoOpts::NO_BODY), "{on:?}");
        assert!(!on.contains(ProtoOpts::NO_HEADER), "{on:?}");
        assert!(
            on.contains(ProtoOpts::SKIP | ProtoOpts::LEADING_SPACE),
            "{on:?}"
        );
        assert!(!on.contains(ProtoOpts::NOREPLY_BODY), "{on:?}");
        assert!(awaits_reply(on, Stage::Body));
        // An MTA that cannot skip or keep the leading space: the body is
        // still asked for, read and dropped.
        let plain = offered - ProtoOpts::SKIP - ProtoOpts::LEADING_SPACE;
        let on = protocol(&config, plain);
        assert!(!on.contains(ProtoOpts::NO_BODY));
        assert!(!on.contains(ProtoOpts::SKIP) && !on.contains(ProtoOpts::LEADING_SPACE));
    }
}
