//! Input decoding shared by the fuzz targets.

/// Splits fuzz input into pieces, each a little-endian u16 length and that many bytes (the
/// last one may be short): frames or updates, depending on the target.
pub fn pieces(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.len() < 2 {
            return None;
        }
        let len = u16::from_le_bytes([data[0], data[1]]) as usize;
        let rest = &data[2..];
        let (piece, rest) = rest.split_at(len.min(rest.len()));
        data = rest;
        Some(piece)
    })
}
