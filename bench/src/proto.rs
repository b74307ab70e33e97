//! The MTA's side of the milter protocol, version 6, as Postfix 3.7 speaks
//! it (its `milter8` client): the framing and constants of `milter-codec`
//! (shared with the test suite and the fuzz targets), and what only the
//! load generator needs: the macro stages, the OPTNEG reply, reading
//! replies from an async stream.
//!
//! Written from the protocol's description (libmilter's `mfdef.h`
//! constants and Postfix's documented behaviour), not from either code.

use tokio::io::{AsyncRead, AsyncReadExt};

pub use milter_codec::*;

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

/// Reads one packet from an async stream into `payload`; returns
/// its command byte.
pub async fn read_async<R: AsyncRead + Unpin>(
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

#[cfg(test)]
mod tests {
    use super::*;

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
