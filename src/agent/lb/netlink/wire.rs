//! The netlink wire format nf_tables speaks (pure): `nlmsghdr` + `nfgenmsg` + attributes
//! (`nlattr`: u16 length, u16 type, value, padded to 4 bytes; nested ones flagged
//! `NLA_F_NESTED`), and the reading of the kernel's answers. Numbers in nf_tables
//! attributes are big-endian; register contents (marks, ct state, numgen results) are in
//! host order, as the kernel compares them.

/// `NETLINK_NETFILTER` subsystem of nf_tables.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub const NFNL_MSG_BATCH_BEGIN: u16 = 16;
pub const NFNL_MSG_BATCH_END: u16 = 17;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_HDRLEN: usize = 16;

/// `NFPROTO_IPV4`: the family of table `ip tend-lb`.
pub const NFPROTO_IPV4: u8 = 2;

/// nf_tables message types (`enum nf_tables_msg_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum MsgType {
    NewTable = 0,
    DelTable = 2,
    NewChain = 3,
    DelChain = 5,
    NewRule = 6,
    GetRule = 7,
    DelRule = 8,
    NewSet = 9,
    DelSet = 11,
    NewSetElem = 12,
    DelSetElem = 14,
}

impl MsgType {
    /// The `nlmsg_type`: subsystem in the high byte.
    pub fn wire(self) -> u16 {
        (NFNL_SUBSYS_NFTABLES << 8) | self as u16
    }
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// A growing buffer of netlink messages. Message and nest lengths are patched when they
/// are closed, so callers write attributes in order and never compute a length.
#[derive(Debug, Default)]
pub struct Writer {
    pub buf: Vec<u8>,
    msg_start: usize,
}

impl Writer {
    /// Starts a message with its `nfgenmsg` (family, version 0, resource id big-endian).
    pub fn begin(&mut self, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
        self.msg_start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
    }

    /// Closes the message begun last: writes its length.
    pub fn end(&mut self) {
        let len = (self.buf.len() - self.msg_start) as u32;
        self.buf[self.msg_start..self.msg_start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// Bytes written since the current message began.
    pub fn msg_len(&self) -> usize {
        self.buf.len() - self.msg_start
    }

    pub fn bytes(&mut self, ty: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(self.buf.len() + align(len) - len, 0);
    }

    /// A NUL-terminated string, as the kernel's `NLA_STRING` policies expect.
    pub fn str(&mut self, ty: u16, value: &str) {
        let mut v = Vec::with_capacity(value.len() + 1);
        v.extend_from_slice(value.as_bytes());
        v.push(0);
        self.bytes(ty, &v);
    }

    pub fn u32(&mut self, ty: u16, value: u32) {
        self.bytes(ty, &value.to_be_bytes());
    }

    pub fn u64(&mut self, ty: u16, value: u64) {
        self.bytes(ty, &value.to_be_bytes());
    }

    /// Opens a nested attribute; returns where it starts, for [`Writer::close`].
    pub fn open(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    /// Closes a nested attribute. Lengths above 65,535 cannot be written: callers split
    /// long element lists over several messages before that.
    pub fn close(&mut self, at: usize) {
        let len = (self.buf.len() - at).min(usize::from(u16::MAX)) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

/// One attribute read back: type (without flags) and value.
pub fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        let ty = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            return None;
        }
        let value = &data[4..len];
        data = &data[align(len).min(data.len())..];
        Some((ty, value))
    })
}

/// One message of a buffer the kernel sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply<'a> {
    pub ty: u16,
    pub seq: u32,
    /// After the `nlmsghdr`.
    pub payload: &'a [u8],
}

/// The messages in one datagram; a truncated one ends the list.
pub fn replies(mut data: &[u8]) -> impl Iterator<Item = Reply<'_>> {
    std::iter::from_fn(move || {
        if data.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return None;
        }
        let reply = Reply {
            ty: u16::from_ne_bytes([data[4], data[5]]),
            seq: u32::from_ne_bytes([data[8], data[9], data[10], data[11]]),
            payload: &data[NLMSG_HDRLEN..len],
        };
        data = &data[align(len).min(data.len())..];
        Some(reply)
    })
}

/// An `NLMSG_ERROR` payload: the errno (0 for an acknowledgement) and the sequence number
/// of the message it answers.
pub fn error_of(payload: &[u8]) -> Option<(i32, u32)> {
    if payload.len() < 4 + NLMSG_HDRLEN {
        return None;
    }
    let errno = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
    let seq = u32::from_ne_bytes([payload[12], payload[13], payload[14], payload[15]]);
    Some((-errno, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nests_carry_their_length() {
        let mut w = Writer::default();
        w.begin(MsgType::NewTable.wire(), NLM_F_REQUEST, 7, NFPROTO_IPV4, 0);
        w.str(1, "tend-lb");
        let n = w.open(4);
        w.u32(1, 0xfffffffd);
        w.close(n);
        w.end();
        let b = &w.buf;
        assert_eq!(b.len(), 16 + 4 + 12 + 4 + 8);
        assert_eq!(
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize,
            b.len()
        );
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 0x0a00);
        assert_eq!(&b[16..20], &[2, 0, 0, 0]);
        // "tend-lb\0" is 8 bytes: attribute length 12, no padding.
        assert_eq!(&b[20..24], &[12, 0, 1, 0]);
        assert_eq!(&b[24..32], b"tend-lb\0");
        assert_eq!(&b[32..36], &[12, 0, 4, 0x80]);
        assert_eq!(&b[36..44], &[8, 0, 1, 0, 0xff, 0xff, 0xff, 0xfd]);
        let read: Vec<(u16, &[u8])> = attrs(&b[20..]).collect();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0], (1, &b"tend-lb\0"[..]));
        assert_eq!(read[1].0, 4);
    }

    #[test]
    fn short_values_are_padded_to_four_bytes() {
        let mut w = Writer::default();
        w.bytes(1, &[0x7f]);
        assert_eq!(w.buf, vec![5, 0, 1, 0, 0x7f, 0, 0, 0]);
        assert_eq!(attrs(&w.buf).next(), Some((1, &[0x7f][..])));
    }

    #[test]
    fn errors_name_the_sequence_number_they_answer() {
        let mut payload = (-2i32).to_ne_bytes().to_vec();
        payload.extend_from_slice(&40u32.to_ne_bytes());
        payload.extend_from_slice(&MsgType::DelChain.wire().to_ne_bytes());
        payload.extend_from_slice(&0u16.to_ne_bytes());
        payload.extend_from_slice(&1234u32.to_ne_bytes());
        payload.extend_from_slice(&0u32.to_ne_bytes());
        assert_eq!(error_of(&payload), Some((2, 1234)));
        assert_eq!(error_of(&payload[..10]), None);
        let mut msg = ((16 + payload.len()) as u32).to_ne_bytes().to_vec();
        msg.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&1234u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&payload);
        let got: Vec<Reply> = replies(&msg).collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].ty, NLMSG_ERROR);
        assert_eq!(got[0].seq, 1234);
        // A truncated buffer yields nothing rather than reading past its end.
        assert_eq!(replies(&msg[..20]).count(), 0);
    }
}
