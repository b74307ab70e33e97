//! The MTA's side of the milter protocol, version 6, as Postfix 3.7 speaks
//! it (its `milter8` client): packets are a 4-byte big-endian length
//! (command byte included), the command byte, then the payload.
//!
//! Written from the protocol's description (libmilter's `mfdef.h`
//! constants and Postfix's documented behaviour), not from either code.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Protocol version Postfix 3.x offers.
pub const VERSION: u32 = 6;

// Commands, MTA → milter.
pub const C_ABORT: u8 = b'A';
pub const C_BODY: u8 = b'B';
pub const C_CONNECT: u8 = b'C';
pub const C_MACRO: u8 = b'D';
pub const C_EOM: u8 = b'E';
pub const C_HELO: u8 = b'H';
pub const C_HEADER: u8 = b'L';
pub const C_MAIL: u8 = b'M';
pub const C_EOH: u8 = b'N';
pub const C_OPTNEG: u8 = b'O';
pub const C_QUIT: u8 = b'Q';
pub const C_RCPT: u8 = b'R';
pub const C_DATA: u8 = b'T';

// Replies and modification actions, milter → MTA.
pub const R_ADDRCPT: u8 = b'+';
pub const R_DELRCPT: u8 = b'-';
pub const R_ADDRCPT_PAR: u8 = b'2';
pub const R_SHUTDOWN: u8 = b'4';
pub const R_ACCEPT: u8 = b'a';
pub const R_REPLBODY: u8 = b'b';
pub const R_CONTINUE: u8 = b'c';
pub const R_DISCARD: u8 = b'd';
pub const R_CHGFROM: u8 = b'e';
pub const R_CONN_FAIL: u8 = b'f';
pub const R_ADDHEADER: u8 = b'h';
pub const R_INSHEADER: u8 = b'i';
pub const R_CHGHEADER: u8 = b'm';
pub const R_PROGRESS: u8 = b'p';
pub const R_QUARANTINE: u8 = b'q';
pub const R_REJECT: u8 = b'r';
pub const R_SKIP: u8 = b's';
pub const R_TEMPFAIL: u8 = b't';
pub const R_REPLYCODE: u8 = b'y';

// Protocol (step) flags.
pub const P_NOCONNECT: u32 = 0x1;
pub const P_NOHELO: u32 = 0x2;
pub const P_NOMAIL: u32 = 0x4;
pub const P_NORCPT: u32 = 0x8;
pub const P_NOBODY: u32 = 0x10;
pub const P_NOHDRS: u32 = 0x20;
pub const P_NOEOH: u32 = 0x40;
pub const P_NR_HDR: u32 = 0x80;
pub const P_NODATA: u32 = 0x200;
pub const P_NR_CONN: u32 = 0x1000;
pub const P_NR_HELO: u32 = 0x2000;
pub const P_NR_MAIL: u32 = 0x4000;
pub const P_NR_RCPT: u32 = 0x8000;
pub const P_NR_DATA: u32 = 0x10000;
pub const P_NR_EOH: u32 = 0x40000;
pub const P_NR_BODY: u32 = 0x80000;
pub const P_HDR_LEADSPC: u32 = 0x100000;

/// The actions Postfix 3.7 offers: add/change headers, change the body,
/// add/delete recipients (with parameters), quarantine, change the sender,
/// set the macro lists (SMFIF_ADDHDRS … SMFIF_SETSYMLIST).
pub const POSTFIX_ACTIONS: u32 = 0x1ff;
/// The steps Postfix 3.7 offers to leave out or not to answer: every flag
/// from SMFIP_NOCONNECT to SMFIP_HDR_LEADSPC (0x1 … 0x100000).
pub const POSTFIX_PROTOCOL: u32 = 0x1f_ffff;

/// Macro stages, in the order of the OPTNEG reply's stage numbers
/// (SMFIM_CONNECT = 0 … SMFIM_EOH = 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect = 0,
    Helo = 1,
    Mail = 2,
    Rcpt = 3,
    Data = 4,
    Eom = 5,
    Eoh = 6,
}

impl Stage {
    /// The command byte a macro packet of this stage names.
    pub fn command(self) -> u8 {
        match self {
            Stage::Connect => C_CONNECT,
            Stage::Helo => C_HELO,
            Stage::Mail => C_MAIL,
            Stage::Rcpt => C_RCPT,
            Stage::Data => C_DATA,
            Stage::Eom => C_EOM,
            Stage::Eoh => C_EOH,
        }
    }

    /// Postfix 3.7's default macro list of the stage (`milter_*_macros`).
    pub fn postfix_default(self) -> &'static [&'static str] {
        match self {
            Stage::Connect => &["j", "{daemon_name}", "{daemon_addr}", "v", "_"],
            Stage::Helo => &[
                "{tls_version}",
                "{cipher}",
                "{cipher_bits}",
                "{cert_subject}",
                "{cert_issuer}",
            ],
            Stage::Mail => &[
                "i",
                "{auth_type}",
                "{auth_authen}",
                "{auth_author}",
                "{mail_addr}",
                "{mail_host}",
                "{mail_mailer}",
            ],
            Stage::Rcpt => &["i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"],
            Stage::Data | Stage::Eoh | Stage::Eom => &["i"],
        }
    }

    fn from_index(i: u32) -> Option<Stage> {
        Some(match i {
            0 => Stage::Connect,
            1 => Stage::Helo,
            2 => Stage::Mail,
            3 => Stage::Rcpt,
            4 => Stage::Data,
            5 => Stage::Eom,
            6 => Stage::Eoh,
            _ => return None,
        })
    }
}

/// Appends one packet: length, command, then what `payload` writes.
pub fn packet(buf: &mut Vec<u8>, command: u8, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0, 0, 0, command]);
    payload(buf);
    let len = u32::try_from(buf.len() - start - 4).expect("packet under 4 GiB");
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends `s` and its terminating NUL.
pub fn cstr(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(s);
    buf.push(0);
}

/// The OPTNEG packet Postfix sends.
pub fn optneg(buf: &mut Vec<u8>) {
    packet(buf, C_OPTNEG, |b| {
        b.extend_from_slice(&VERSION.to_be_bytes());
        b.extend_from_slice(&POSTFIX_ACTIONS.to_be_bytes());
        b.extend_from_slice(&POSTFIX_PROTOCOL.to_be_bytes());
    });
}

/// What the milter answered to OPTNEG.
#[derive(Debug, Clone, Default)]
pub struct Negotiated {
    pub version: u32,
    pub actions: u32,
    pub protocol: u32,
    /// The macro lists the milter asked for, by stage number; a stage it
    /// did not name keeps Postfix's default list.
    pub macros: [Option<Vec<String>>; 7],
}

impl Negotiated {
    pub fn parse(payload: &[u8]) -> Result<Self, String> {
        if payload.len() < 12 {
            return Err(format!("OPTNEG reply of {} bytes", payload.len()));
        }
        let word = |i: usize| u32::from_be_bytes(payload[i..i + 4].try_into().expect("4 bytes"));
        let mut n = Negotiated {
            version: word(0),
            actions: word(4),
            protocol: word(8),
            macros: Default::default(),
        };
        if n.actions & !POSTFIX_ACTIONS != 0 {
            return Err(format!("milter asked for actions {:#x}", n.actions));
        }
        if n.protocol & !POSTFIX_PROTOCOL != 0 {
            return Err(format!("milter asked for protocol steps {:#x}", n.protocol));
        }
        let mut rest = &payload[12..];
        while rest.len() >= 4 {
            let index = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
            rest = &rest[4..];
            let end = rest
                .iter()
                .position(|&c| c == 0)
                .ok_or("unterminated macro list in OPTNEG reply")?;
            let list = String::from_utf8_lossy(&rest[..end]);
            rest = &rest[end + 1..];
            let stage = Stage::from_index(index)
                .ok_or_else(|| format!("macro list for unknown stage {index}"))?;
            n.macros[stage as usize] = Some(
                list.split([' ', ','])
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            );
        }
        Ok(n)
    }

    pub fn has(&self, flag: u32) -> bool {
        self.protocol & flag != 0
    }

    /// The macro names to send at `stage`.
    pub fn macro_names(&self, stage: Stage) -> Vec<&str> {
        match &self.macros[stage as usize] {
            Some(list) => list.iter().map(String::as_str).collect(),
            None => stage.postfix_default().to_vec(),
        }
    }
}

/// Reads one packet into `payload`; returns its command byte.
pub async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
    payload: &mut Vec<u8>,
) -> std::io::Result<u8> {
    let len = r.read_u32().await? as usize;
    // Postfix refuses replies over its own limits; 1 MiB is ample here.
    if len == 0 || len > (1 << 20) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("reply packet length {len}"),
        ));
    }
    let command = r.read_u8().await?;
    payload.clear();
    payload.resize(len - 1, 0);
    r.read_exact(payload).await?;
    Ok(command)
}

/// Splits NUL-terminated strings.
pub fn cstrings(payload: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = payload;
    while let Some(end) = rest.iter().position(|&c| c == 0) {
        out.push(&rest[..end]);
        rest = &rest[end + 1..];
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_length_counts_the_command_byte() {
        let mut buf = Vec::new();
        packet(&mut buf, C_HELO, |b| cstr(b, b"mx"));
        // length 4 = 'H' + "mx" + NUL
        assert_eq!(buf, b"\0\0\0\x04Hmx\0");
    }

    #[test]
    fn optneg_reply_with_macro_lists() {
        let mut p = Vec::new();
        p.extend_from_slice(&6u32.to_be_bytes());
        p.extend_from_slice(&0x11u32.to_be_bytes());
        p.extend_from_slice(&(P_NOBODY | P_NR_HDR).to_be_bytes());
        p.extend_from_slice(&0u32.to_be_bytes());
        p.extend_from_slice(b"j\0");
        p.extend_from_slice(&2u32.to_be_bytes());
        p.extend_from_slice(b"{auth_authen} i\0");
        let n = Negotiated::parse(&p).unwrap();
        assert_eq!(n.macro_names(Stage::Connect), ["j"]);
        assert_eq!(n.macro_names(Stage::Mail), ["{auth_authen}", "i"]);
        // not named: Postfix's default
        assert_eq!(n.macro_names(Stage::Rcpt), Stage::Rcpt.postfix_default());
        assert!(n.has(P_NR_HDR) && !n.has(P_NOEOH));
    }
}
