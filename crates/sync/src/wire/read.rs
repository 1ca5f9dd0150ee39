//! Bounds-checked little-endian reads from a cursor over the buffered bytes.
//!
//! Every read says [`DecodeError::Incomplete`] instead of panicking when the bytes are not there yet, so
//! the decoder can be run on any prefix of a stream.

use std::io::Cursor;

use bytes::Buf;

use super::error::DecodeError;
use crate::Md5Sum;

/// The next `n` bytes, borrowed from the buffer.
pub(crate) fn take<'a>(src: &mut Cursor<&'a [u8]>, n: usize) -> Result<&'a [u8], DecodeError> {
    let buf: &'a [u8] = src.get_ref();
    let start = usize::try_from(src.position()).map_err(|_| DecodeError::Incomplete)?;
    let end = start.checked_add(n).ok_or(DecodeError::Incomplete)?;
    if end > buf.len() {
        return Err(DecodeError::Incomplete);
    }
    src.set_position(end as u64);
    Ok(&buf[start..end])
}

pub(crate) fn u8(src: &mut Cursor<&[u8]>) -> Result<u8, DecodeError> {
    if src.remaining() < 1 {
        return Err(DecodeError::Incomplete);
    }
    Ok(src.get_u8())
}

pub(crate) fn u16_le(src: &mut Cursor<&[u8]>) -> Result<u16, DecodeError> {
    if src.remaining() < 2 {
        return Err(DecodeError::Incomplete);
    }
    Ok(src.get_u16_le())
}

pub(crate) fn u32_le(src: &mut Cursor<&[u8]>) -> Result<u32, DecodeError> {
    if src.remaining() < 4 {
        return Err(DecodeError::Incomplete);
    }
    Ok(src.get_u32_le())
}

pub(crate) fn u64_le(src: &mut Cursor<&[u8]>) -> Result<u64, DecodeError> {
    if src.remaining() < 8 {
        return Err(DecodeError::Incomplete);
    }
    Ok(src.get_u64_le())
}

pub(crate) fn i64_le(src: &mut Cursor<&[u8]>) -> Result<i64, DecodeError> {
    if src.remaining() < 8 {
        return Err(DecodeError::Incomplete);
    }
    Ok(src.get_i64_le())
}

pub(crate) fn md5(src: &mut Cursor<&[u8]>) -> Result<Md5Sum, DecodeError> {
    let mut d = [0u8; 16];
    d.copy_from_slice(take(src, 16)?);
    Ok(Md5Sum(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_little_endian_and_bounded() {
        let bytes = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        let mut c = Cursor::new(&bytes[..]);
        assert_eq!(u16_le(&mut c), Ok(0x0201));
        assert_eq!(u32_le(&mut c), Ok(0x0605_0403));
        assert_eq!(u64_le(&mut c), Err(DecodeError::Incomplete));
        assert_eq!(take(&mut c, 3), Ok(&[7u8, 8, 9][..]));
        assert_eq!(u8(&mut c), Err(DecodeError::Incomplete));
        assert_eq!(take(&mut c, usize::MAX), Err(DecodeError::Incomplete));
        c.set_position(100);
        assert_eq!(take(&mut c, 0), Err(DecodeError::Incomplete));
        assert_eq!(u16_le(&mut c), Err(DecodeError::Incomplete));
    }
}
