//! The MTA's side of the milter protocol, version 6, as Postfix 3.7 speaks
//! it (its `milter8` client): what spfmilter's tests, its benchmark
//! (`bench/`) and its fuzz targets (`fuzz/`) send to a milter and read back.
//!
//! A packet is a 4-octet big-endian length (the command octet included),
//! the command octet, then the data; strings in the data end with a NUL.
//! Written from the protocol's description (libmilter's `mfdef.h`
//! constants and Postfix's documented behaviour), not from either code.

use std::io::{self, Read};

/// The protocol version Postfix 3.x offers.
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
pub const P_NR_UNKN: u32 = 0x20000;
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

/// Appends one packet to `buf`: the length, `command`, then what `data`
/// writes.
///
/// # Panics
///
/// On a packet of 4 GiB or more, which the protocol cannot frame.
pub fn append_packet(buf: &mut Vec<u8>, command: u8, data: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0, 0, 0, command]);
    data(buf);
    let len = u32::try_from(buf.len() - start - 4).expect("a packet under 4 GiB");
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// One packet of `command` and `data`.
pub fn packet(command: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 5);
    append_packet(&mut out, command, |b| b.extend_from_slice(data));
    out
}

/// Appends `s` and its terminating NUL.
pub fn append_cstr(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(s);
    buf.push(0);
}

/// Appends the SMFIC_OPTNEG packet Postfix sends: [`VERSION`],
/// [`POSTFIX_ACTIONS`], [`POSTFIX_PROTOCOL`].
pub fn append_optneg(buf: &mut Vec<u8>) {
    append_packet(buf, C_OPTNEG, |b| {
        b.extend_from_slice(&VERSION.to_be_bytes());
        b.extend_from_slice(&POSTFIX_ACTIONS.to_be_bytes());
        b.extend_from_slice(&POSTFIX_PROTOCOL.to_be_bytes());
    });
}

/// The SMFIC_OPTNEG packet Postfix sends (see [`append_optneg`]).
pub fn optneg() -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    append_optneg(&mut out);
    out
}

/// One packet read from bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    pub command: u8,
    pub data: &'a [u8],
}

/// A length field of 0: no room for the command octet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroLength;

impl std::fmt::Display for ZeroLength {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a milter packet of length 0")
    }
}

impl std::error::Error for ZeroLength {}

/// The first packet of `bytes` and the bytes after it; `Ok(None)` when
/// `bytes` hold less than a whole packet.
pub fn split_packet(bytes: &[u8]) -> Result<Option<(Packet<'_>, &[u8])>, ZeroLength> {
    let Some((head, rest)) = bytes.split_first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*head) as usize;
    let Some(data_len) = len.checked_sub(1) else {
        return Err(ZeroLength);
    };
    let Some((&command, rest)) = rest.split_first() else {
        return Ok(None);
    };
    if rest.len() < data_len {
        return Ok(None);
    }
    let (data, rest) = rest.split_at(data_len);
    Ok(Some((Packet { command, data }, rest)))
}

/// Reads one packet from a blocking stream: its command and data.
pub fn read_packet(r: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head[..4])?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let data_len = len
        .checked_sub(1)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, ZeroLength))?;
    r.read_exact(&mut head[4..])?;
    let mut data = vec![0u8; data_len];
    r.read_exact(&mut data)?;
    Ok((head[4], data))
}

/// The NUL-terminated strings of packet data, and what follows the last
/// NUL if anything does.
pub fn cstrings(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
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
    fn the_length_counts_the_command_octet() {
        let mut buf = Vec::new();
        append_packet(&mut buf, C_HELO, |b| append_cstr(b, b"mx"));
        // length 4 = 'H' + "mx" + NUL
        assert_eq!(buf, b"\0\0\0\x04Hmx\0");
        assert_eq!(packet(C_DATA, b""), b"\0\0\0\x01T");
    }

    #[test]
    fn postfix_offers_version_6_every_action_and_every_step() {
        assert_eq!(
            optneg(),
            b"\0\0\0\x0dO\0\0\0\x06\0\0\x01\xff\0\x1f\xff\xff".to_vec()
        );
    }

    #[test]
    fn packets_split_off_the_front_whole_or_not_at_all() {
        let mut bytes = packet(C_HELO, b"mx\0");
        bytes.extend(packet(C_QUIT, b""));
        let (first, rest) = split_packet(&bytes).unwrap().unwrap();
        assert_eq!((first.command, first.data), (C_HELO, &b"mx\0"[..]));
        let (second, rest) = split_packet(rest).unwrap().unwrap();
        assert_eq!(
            (second.command, second.data, rest),
            (C_QUIT, &b""[..], &b""[..])
        );
        for cut in 0..8 {
            assert_eq!(split_packet(&bytes[..cut]), Ok(None), "{cut} bytes");
        }
        assert_eq!(split_packet(b"\0\0\0\0x"), Err(ZeroLength));
        let (command, data) = read_packet(&mut &bytes[..]).unwrap();
        assert_eq!((command, &data[..]), (C_HELO, &b"mx\0"[..]));
        assert!(read_packet(&mut &bytes[..6]).is_err());
        assert!(read_packet(&mut &b"\0\0\0\0x"[..]).is_err());
    }

    #[test]
    fn strings_end_with_a_nul_and_a_last_one_may_not() {
        assert_eq!(cstrings(b"name\0value\0"), [&b"name"[..], b"value"]);
        assert_eq!(cstrings(b"name\0\0"), [&b"name"[..], b""]);
        assert_eq!(cstrings(b"a\0b"), [&b"a"[..], b"b"]);
        assert!(cstrings(b"").is_empty());
    }
}
