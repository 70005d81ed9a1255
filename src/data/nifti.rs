//! NIfTI-1 reading and writing: scans as HU volumes, masks as `u8`, headers alone for indexing.
//!
//! Key functions: [`read_volume`] (f32 HU, `scl_slope`/`scl_inter` applied), [`read_label`]
//! (rounded to `u8`), [`read_header`] (no voxel data), [`write_i16`], [`write_u8`],
//! [`write_f32`] and [`header_for`] (a header for a new volume from its spacing alone).
//!
//! Design:
//! - We read the file's bytes ourselves and recognise gzip by its magic bytes, not by the file
//!   name (the `nifti` crate decides by the `.gz` suffix, so a mislabelled file fails there).
//!   The decoded bytes go to the crate's header parser and volume reader.
//! - Every header field the crate trusts blindly is checked first (dimensions, datatype against
//!   bitpix, voxel offset, spacing), because the crate panics on some inconsistent headers. A bad
//!   file gives one [`VolumeError`] that names it; no input panics.
//! - The crate returns `[x, y, z]` in Fortran order; `.reversed_axes()` turns it, without a
//!   copy, into the C-order `[z, y, x]` array that [`Volume`] holds.
//! - Scaling: a zero or non-finite `scl_slope` means "no scaling" (NIfTI-1, nibabel); the crate
//!   would turn a NaN slope into a NaN volume, so we scale ourselves and warn.
//! - Writes go to a temporary file in the target folder and are renamed into place, so a reader
//!   never sees half a file. The reference header (the volume's own, or [`header_for`]) keeps the
//!   affine; spacing is written to `pixdim`; slope 1 and intercept 0 are always written, so
//!   voxel values are stored as they are (real HU for i16/f32).

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use ::nifti::volume::inmem::InMemNiftiVolume;
use ::nifti::writer::WriterOptions;
use ::nifti::{IntoNdArray, NiftiHeader, NiftiType};
use flate2::read::MultiGzDecoder;
use ndarray::{ArrayView3, Ix3};

use super::Volume;

/// Size of a NIfTI-1 header in bytes (`sizeof_hdr`).
pub const HEADER_BYTES: usize = 348;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// NIfTI-1 stores dimensions as signed 16-bit integers.
const MAX_DIM: usize = i16::MAX as usize;

/// A file that could not be read or written, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct VolumeError {
    pub path: PathBuf,
    pub kind: VolumeErrorKind,
}

impl VolumeError {
    pub fn new(path: impl Into<PathBuf>, kind: VolumeErrorKind) -> Self {
        VolumeError {
            path: path.into(),
            kind,
        }
    }
}

/// What was wrong with a NIfTI file (the path is in [`VolumeError`]).
#[derive(Debug, thiserror::Error)]
pub enum VolumeErrorKind {
    #[error("cannot read: {0}")]
    Io(io::Error),
    #[error("file is empty")]
    Empty,
    #[error("truncated or corrupt gzip data: {0}")]
    Gzip(io::Error),
    #[error("{len} bytes, shorter than a NIfTI-1 header ({HEADER_BYTES} bytes)")]
    TooShort { len: usize },
    #[error("NIfTI-2 files are not supported: expected NIfTI-1 (sizeof_hdr 348)")]
    Nifti2,
    #[error("not a NIfTI-1 file: expected magic \"n+1\" at byte 344, found {found:?}")]
    BadMagic { found: String },
    #[error("header-only NIfTI (.hdr/.img pair) is not supported: expected a single .nii file")]
    HeaderPair,
    #[error("expected a 3D volume (a 4th dimension of 1 is accepted), got dim = {dims:?}")]
    NotThreeD { dims: Vec<u16> },
    #[error("unsupported datatype code {code}: expected an integer or float scalar type")]
    Datatype { code: i16 },
    #[error("bitpix {bitpix} does not match datatype {datatype:?} ({expected} bits)")]
    Bitpix {
        bitpix: i16,
        datatype: NiftiType,
        expected: usize,
    },
    #[error("invalid vox_offset {0}: expected a whole number of bytes >= 352")]
    VoxOffset(f32),
    #[error("invalid spacing pixdim[{index}] = {value}: expected a non-zero, finite voxel size")]
    Spacing { index: usize, value: f32 },
    #[error("truncated voxel data: expected {expected} bytes from offset {offset}, found {found}")]
    Truncated {
        offset: usize,
        expected: usize,
        found: usize,
    },
    #[error("{count} of {total} voxels are NaN or infinite")]
    NonFinite { count: usize, total: usize },
    #[error("label value {value} is not in 0..=255")]
    LabelValue { value: f32 },
    #[error(
        "volume of {voxels} voxels (dim {shape:?}) is larger than the limit of {max_voxels} voxels, or an axis above {max_dim}"
    )]
    TooLarge {
        shape: [usize; 3],
        voxels: usize,
        max_voxels: usize,
        max_dim: usize,
    },
    #[error("invalid header: {0}")]
    Header(String),
    #[error("expected a file name ending in .nii or .nii.gz")]
    FileName,
    #[error(
        "cannot write a volume with shape [z, y, x] = {shape:?}: every size must be in 1..=32767"
    )]
    WriteShape { shape: [usize; 3] },
    #[error("cannot write spacing [z, y, x] = {spacing:?} mm: expected positive, finite sizes")]
    WriteSpacing { spacing: [f64; 3] },
    #[error("cannot write: {0}")]
    Write(String),
}

/// A header and what it says about the grid, validated; no voxel data read.
#[derive(Debug, Clone)]
pub struct HeaderInfo {
    pub header: NiftiHeader,
    /// `[z, y, x]` sizes (a trailing 4th dimension of 1 squeezed away).
    pub shape: [usize; 3],
    /// Voxel size in mm along `[z, y, x]`.
    pub spacing: [f64; 3],
    pub datatype: NiftiType,
    /// The 348 header bytes as stored (after gzip decoding): fingerprints hash them.
    pub raw: Vec<u8>,
}

impl HeaderInfo {
    /// Number of voxels.
    pub fn voxels(&self) -> usize {
        self.shape.iter().product()
    }

    /// The voxel-to-world matrix (3 rows of 4) the header defines: see [`affine`].
    pub fn affine(&self) -> [[f64; 4]; 3] {
        affine(&self.header)
    }
}

/// Reads a scan as f32 with `scl_slope`/`scl_inter` applied (HU for CT).
///
/// NaN or infinite voxels are an error: they would poison every loss and metric downstream.
pub fn read_volume(path: impl AsRef<Path>) -> Result<Volume<f32>, VolumeError> {
    let path = path.as_ref();
    let vol = read_f32(path)?;
    let count = vol.data.iter().filter(|v| !v.is_finite()).count();
    if count > 0 {
        let total = vol.data.len();
        return Err(VolumeError::new(
            path,
            VolumeErrorKind::NonFinite { count, total },
        ));
    }
    Ok(vol)
}

/// Reads a mask as `u8`: values are read as f32 (some labels are stored as float) and rounded.
///
/// A value outside `0..=255` or a NaN is an error; values far from an integer are rounded with
/// a warning.
pub fn read_label(path: impl AsRef<Path>) -> Result<Volume<u8>, VolumeError> {
    let path = path.as_ref();
    let vol = read_f32(path)?;
    let mut off_integer = 0usize;
    for &v in vol.data.iter() {
        let r = v.round();
        if !(0.0..=255.0).contains(&r) {
            // NaN fails `contains` too, and is reported as the value it is.
            return Err(VolumeError::new(
                path,
                VolumeErrorKind::LabelValue { value: v },
            ));
        }
        if (v - r).abs() > 1e-3 {
            off_integer += 1;
        }
    }
    if off_integer > 0 {
        tracing::warn!(
            "{}: {off_integer} label voxels are not whole numbers; rounded to the nearest",
            path.display()
        );
    }
    Ok(vol.map(|&v| v.round() as u8))
}

/// Reads and validates the header only (for gzip, only its first bytes are decompressed).
pub fn read_header(path: impl AsRef<Path>) -> Result<HeaderInfo, VolumeError> {
    let path = path.as_ref();
    let err = |kind| VolumeError::new(path, kind);
    let mut file = BufReader::new(File::open(path).map_err(|e| err(VolumeErrorKind::Io(e)))?);
    let mut magic = [0u8; 2];
    let n = read_up_to(&mut file, &mut magic).map_err(|e| err(VolumeErrorKind::Io(e)))?;
    if n == 0 {
        return Err(err(VolumeErrorKind::Empty));
    }
    let head = &magic[..n];
    // vox_offset's 4 bytes follow the header; they are needed for nothing here.
    let mut bytes = Vec::with_capacity(HEADER_BYTES);
    if n == 2 && magic == GZIP_MAGIC {
        let mut gz = MultiGzDecoder::new(head.chain(file)).take(HEADER_BYTES as u64);
        gz.read_to_end(&mut bytes)
            .map_err(|e| err(VolumeErrorKind::Gzip(e)))?;
    } else {
        head.chain(file)
            .take(HEADER_BYTES as u64)
            .read_to_end(&mut bytes)
            .map_err(|e| err(VolumeErrorKind::Io(e)))?;
    }
    let info = parse_header(path, &bytes).map_err(err)?;
    if !(n == 2 && magic == GZIP_MAGIC) {
        // Uncompressed: the file size tells whether the voxel data are all there.
        let len = fs::metadata(path)
            .map_err(|e| err(VolumeErrorKind::Io(e)))?
            .len() as usize;
        let offset = info.header.vox_offset as usize;
        let expected = info.voxels() * info.datatype.size_of();
        if len < offset + expected {
            let found = len.saturating_sub(offset);
            return Err(err(VolumeErrorKind::Truncated {
                offset,
                expected,
                found,
            }));
        }
    }
    Ok(info)
}

/// The header and the voxel bytes (gzip-decoded when the first bytes are the gzip magic,
/// whatever the name). Reading stops at `vox_offset` + the data size the header declares: a
/// gzip bomb behind a small header is never decompressed further, and no buffer grows beyond
/// what the (bounded) header asks for.
fn read_bounded(path: &Path) -> Result<(HeaderInfo, Vec<u8>), VolumeError> {
    let err = |kind| VolumeError::new(path, kind);
    let file = File::open(path).map_err(|e| err(VolumeErrorKind::Io(e)))?;
    let file_len = file.metadata().map_or(0, |m| m.len());
    let mut file = BufReader::new(file);
    let mut magic = [0u8; 2];
    let n = read_up_to(&mut file, &mut magic).map_err(|e| err(VolumeErrorKind::Io(e)))?;
    if n == 0 {
        return Err(err(VolumeErrorKind::Empty));
    }
    let gz = n == 2 && magic == GZIP_MAGIC;
    let head = &magic[..n];
    let mut reader: Box<dyn Read> = if gz {
        Box::new(MultiGzDecoder::new(head.chain(file)))
    } else {
        Box::new(head.chain(file))
    };
    let read_err = |e| {
        err(if gz {
            VolumeErrorKind::Gzip(e)
        } else {
            VolumeErrorKind::Io(e)
        })
    };
    let mut bytes = Vec::with_capacity(HEADER_BYTES);
    (&mut reader)
        .take(HEADER_BYTES as u64)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    let info = parse_header(path, &bytes).map_err(err)?;
    let offset = info.header.vox_offset as usize;
    let need = offset + info.voxels() * info.datatype.size_of();
    // Capacity: what the header asks, but no more than the input can hold (deflate expands at
    // most ~1032×), so a lying header costs nothing until its bytes really arrive.
    let ratio = if gz { 1032 } else { 1 };
    let most = (file_len as usize).saturating_mul(ratio);
    bytes.reserve(need.min(most).saturating_sub(bytes.len()));
    reader
        .take((need - bytes.len().min(need)) as u64)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    Ok((info, bytes))
}

fn read_f32(path: &Path) -> Result<Volume<f32>, VolumeError> {
    let err = |kind| VolumeError::new(path, kind);
    let (info, mut bytes) = read_bounded(path)?;
    let offset = info.header.vox_offset as usize;
    let expected = info.voxels() * info.datatype.size_of();
    let found = bytes.len().saturating_sub(offset);
    if found < expected {
        return Err(err(VolumeErrorKind::Truncated {
            offset,
            expected,
            found,
        }));
    }

    // Hand the crate a 3D header without scaling: we squeeze a 4th dimension of 1 and apply
    // the slope ourselves (see the module docs).
    let mut h3 = info.header.clone();
    let [z, y, x] = info.shape;
    h3.dim = [3, x as u16, y as u16, z as u16, 1, 1, 1, 1];
    h3.scl_slope = 0.0;
    h3.scl_inter = 0.0;
    let header_err = |e: ::nifti::NiftiError| err(VolumeErrorKind::Header(e.to_string()));
    // Keep only the voxel bytes, in place (no second buffer of the volume's size).
    bytes.truncate(offset + expected);
    bytes.drain(..offset);
    let raw = InMemNiftiVolume::from_raw_data(&h3, bytes).map_err(header_err)?;
    let xyz = raw.into_ndarray::<f32>().map_err(header_err)?;
    let xyz = xyz
        .into_dimensionality::<Ix3>()
        .map_err(|e| err(VolumeErrorKind::Header(e.to_string())))?;
    // Fortran [x, y, z] reversed is C-order [z, y, x]: no copy.
    let mut data = xyz.reversed_axes();
    if !data.is_standard_layout() {
        data = data.as_standard_layout().into_owned();
    }

    if let Some((slope, inter)) = scaling(path, &info.header) {
        data.mapv_inplace(|v| v * slope + inter);
    }
    Ok(Volume {
        data,
        spacing: info.spacing,
        header: Some(Box::new(info.header)),
    })
}

/// The `(slope, intercept)` to apply, or `None` when the header asks for no scaling.
fn scaling(path: &Path, h: &NiftiHeader) -> Option<(f32, f32)> {
    let (slope, inter) = (h.scl_slope, h.scl_inter);
    if slope == 0.0 || !slope.is_finite() {
        // NIfTI-1: a zero slope means "no scaling"; nibabel writes NaN for the same.
        tracing::warn!(
            "{}: scl_slope is {slope}; reading voxel values unscaled",
            path.display()
        );
        return None;
    }
    if !inter.is_finite() {
        tracing::warn!("{}: scl_inter is {inter}; using 0", path.display());
        return Some((slope, 0.0));
    }
    if slope == 1.0 && inter == 0.0 {
        None
    } else {
        Some((slope, inter))
    }
}

/// Parses and validates a header from the first bytes of a (decoded) file.
fn parse_header(path: &Path, bytes: &[u8]) -> Result<HeaderInfo, VolumeErrorKind> {
    if bytes.len() < HEADER_BYTES {
        return Err(VolumeErrorKind::TooShort { len: bytes.len() });
    }
    let sizeof_hdr = [
        i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
    ];
    if sizeof_hdr.contains(&540) {
        return Err(VolumeErrorKind::Nifti2);
    }
    let magic = &bytes[344..348];
    if magic == b"ni1\0" {
        return Err(VolumeErrorKind::HeaderPair);
    }
    if magic != b"n+1\0" {
        return Err(VolumeErrorKind::BadMagic {
            found: String::from_utf8_lossy(magic).into_owned(),
        });
    }
    let header = NiftiHeader::from_reader(&bytes[..HEADER_BYTES])
        .map_err(|e| VolumeErrorKind::Header(e.to_string()))?;

    let ndim = header.dim[0] as usize;
    let dims = &header.dim[1..=ndim.clamp(1, 7)];
    let squeezable = dims.iter().skip(3).all(|&d| d == 1);
    if !(3..=7).contains(&ndim) || !squeezable || dims.iter().take(3).any(|&d| d == 0) {
        return Err(VolumeErrorKind::NotThreeD {
            dims: header.dim[..=ndim.min(7)].to_vec(),
        });
    }
    let shape = [dims[2] as usize, dims[1] as usize, dims[0] as usize];
    // Bounded before anything of this size is read or allocated (dims are i16, so no overflow).
    let voxels: usize = shape.iter().product();
    use crate::limits::{MAX_IMAGE_DIM, MAX_VOXELS};
    if voxels > MAX_VOXELS || shape.iter().any(|&d| d > MAX_IMAGE_DIM) {
        return Err(VolumeErrorKind::TooLarge {
            shape,
            voxels,
            max_voxels: MAX_VOXELS,
            max_dim: MAX_IMAGE_DIM,
        });
    }

    let datatype = match header.data_type() {
        Ok(
            t @ (NiftiType::Uint8
            | NiftiType::Int8
            | NiftiType::Uint16
            | NiftiType::Int16
            | NiftiType::Uint32
            | NiftiType::Int32
            | NiftiType::Uint64
            | NiftiType::Int64
            | NiftiType::Float32
            | NiftiType::Float64),
        ) => t,
        _ => {
            return Err(VolumeErrorKind::Datatype {
                code: header.datatype,
            });
        }
    };
    let expected = datatype.size_of() * 8;
    if header.bitpix as i64 != expected as i64 {
        // The crate sizes the buffer by bitpix and decodes by datatype: a mismatch panics there.
        return Err(VolumeErrorKind::Bitpix {
            bitpix: header.bitpix,
            datatype,
            expected,
        });
    }
    let off = header.vox_offset;
    if !off.is_finite() || off < 352.0 || off.fract() != 0.0 {
        return Err(VolumeErrorKind::VoxOffset(off));
    }

    for index in 1..=3 {
        let value = header.pixdim[index];
        // Zero or non-finite sizes are unusable. Negative ones occur in real headers (a flip
        // that belongs in qfac or the affine): spacing is |pixdim| as nibabel reads it.
        if !(value.is_finite() && value != 0.0) {
            return Err(VolumeErrorKind::Spacing { index, value });
        }
        if value < 0.0 {
            tracing::warn!(
                "{}: pixdim[{index}] = {value} is negative; using |pixdim|",
                path.display()
            );
        }
    }
    let to_mm = space_unit_to_mm(&header).unwrap_or_else(|| {
        tracing::warn!(
            "{}: xyzt_units ({}) names no spatial unit; assuming mm",
            path.display(),
            header.xyzt_units
        );
        1.0
    });
    let p = |i: usize| decimal_f64(header.pixdim[i]).abs() * to_mm;
    let spacing = [p(3), p(2), p(1)];
    Ok(HeaderInfo {
        header,
        shape,
        spacing,
        datatype,
        raw: bytes[..HEADER_BYTES].to_vec(),
    })
}

/// The f64 of the shortest decimal that reads back as `v` (0.45f32 → 0.45, not
/// 0.44999998807907104): what the writer of the header meant, and what users expect to see.
fn decimal_f64(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

/// Millimetres per unit of `pixdim`, or `None` when the header names no spatial unit.
fn space_unit_to_mm(h: &NiftiHeader) -> Option<f64> {
    match h.xyzt_units & 0o7 {
        1 => Some(1000.0),
        2 => Some(1.0),
        3 => Some(0.001),
        _ => None,
    }
}

/// The voxel-to-world matrix, rows x, y, z: sform when `sform_code > 0`, else qform when
/// `qform_code > 0`, else the scaling-only "base" matrix (nifti1_io.c's order of preference).
/// Indices are NIfTI's `(i, j, k) = (x, y, z)` voxel indices.
pub fn affine(h: &NiftiHeader) -> [[f64; 4]; 3] {
    let f = |r: [f32; 4]| r.map(|v| v as f64);
    if h.sform_code > 0 {
        return [f(h.srow_x), f(h.srow_y), f(h.srow_z)];
    }
    let (dx, dy, dz) = (h.pixdim[1] as f64, h.pixdim[2] as f64, h.pixdim[3] as f64);
    if h.qform_code <= 0 {
        return [
            [dx, 0.0, 0.0, 0.0],
            [0.0, dy, 0.0, 0.0],
            [0.0, 0.0, dz, 0.0],
        ];
    }
    // nifti1_io.c nifti_quatern_to_mat44.
    let (mut b, mut c, mut d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
    let mut a = 1.0 - (b * b + c * c + d * d);
    if a < 1e-7 {
        let s = 1.0 / (b * b + c * c + d * d).sqrt();
        b *= s;
        c *= s;
        d *= s;
        a = 0.0;
    } else {
        a = a.sqrt();
    }
    let pos = |v: f64| if v > 0.0 { v } else { 1.0 };
    let (xd, yd) = (pos(dx), pos(dy));
    let zd = if h.pixdim[0] < 0.0 { -pos(dz) } else { pos(dz) };
    let (qx, qy, qz) = (h.quatern_x as f64, h.quatern_y as f64, h.quatern_z as f64);
    [
        [
            (a * a + b * b - c * c - d * d) * xd,
            2.0 * (b * c - a * d) * yd,
            2.0 * (b * d + a * c) * zd,
            qx,
        ],
        [
            2.0 * (b * c + a * d) * xd,
            (a * a + c * c - b * b - d * d) * yd,
            2.0 * (c * d - a * b) * zd,
            qy,
        ],
        [
            2.0 * (b * d - a * c) * xd,
            2.0 * (c * d + a * b) * yd,
            (a * a + d * d - c * c - b * b) * zd,
            qz,
        ],
    ]
}

/// A header for a new volume of `[z, y, x]` sizes with the given spacing in mm: units mm,
/// identity orientation, origin at the centre of the grid (qform and sform both set, code 1
/// "scanner anatomical"). Dimensions and datatype are filled in when writing.
pub fn header_for(shape_zyx: [usize; 3], spacing_zyx: [f64; 3]) -> NiftiHeader {
    let [nz, ny, nx] = shape_zyx;
    let [sz, sy, sx] = spacing_zyx;
    let centre = |n: usize, s: f64| (-(n.saturating_sub(1) as f64) / 2.0 * s) as f32;
    let (ox, oy, oz) = (centre(nx, sx), centre(ny, sy), centre(nz, sz));
    let dim = |n: usize| n.min(u16::MAX as usize) as u16;
    NiftiHeader {
        dim: [3, dim(nx), dim(ny), dim(nz), 1, 1, 1, 1],
        pixdim: [1.0, sx as f32, sy as f32, sz as f32, 1.0, 1.0, 1.0, 1.0],
        xyzt_units: 2 | 8, // mm, seconds
        qform_code: 1,
        sform_code: 1,
        quatern_b: 0.0,
        quatern_c: 0.0,
        quatern_d: 0.0,
        quatern_x: ox,
        quatern_y: oy,
        quatern_z: oz,
        srow_x: [sx as f32, 0.0, 0.0, ox],
        srow_y: [0.0, sy as f32, 0.0, oy],
        srow_z: [0.0, 0.0, sz as f32, oz],
        scl_slope: 1.0,
        scl_inter: 0.0,
        ..NiftiHeader::default()
    }
}

/// Writes HU (or any int16 image) as NIfTI int16; `.nii.gz` compresses.
pub fn write_i16(vol: &Volume<i16>, path: impl AsRef<Path>) -> Result<(), VolumeError> {
    write_with(vol, path.as_ref(), |opts, data| opts.write_nifti(&data))
}

/// Writes a mask as NIfTI uint8.
pub fn write_u8(vol: &Volume<u8>, path: impl AsRef<Path>) -> Result<(), VolumeError> {
    write_with(vol, path.as_ref(), |opts, data| opts.write_nifti(&data))
}

/// Writes float32 voxels (probability maps, resampled HU). NaN or infinite voxels are refused.
pub fn write_f32(vol: &Volume<f32>, path: impl AsRef<Path>) -> Result<(), VolumeError> {
    let path = path.as_ref();
    let count = vol.data.iter().filter(|v| !v.is_finite()).count();
    if count > 0 {
        let total = vol.data.len();
        return Err(VolumeError::new(
            path,
            VolumeErrorKind::NonFinite { count, total },
        ));
    }
    write_with(vol, path, |opts, data| opts.write_nifti(&data))
}

/// Whether `path` names a gzip-compressed NIfTI file (`.nii.gz`), a plain one (`.nii`), or
/// neither (`None`).
pub fn nifti_compression(path: &Path) -> Option<bool> {
    let name = path.file_name()?.to_str()?;
    if name.ends_with(".nii.gz") {
        Some(true)
    } else if name.ends_with(".nii") {
        Some(false)
    } else {
        None
    }
}

/// The header to write `vol` with: its own (affine kept) or a new one, with `pixdim` set from
/// `vol.spacing` in the header's spatial unit.
fn header_to_write<T>(vol: &Volume<T>) -> NiftiHeader {
    let shape = vol.shape();
    let mut h = match &vol.header {
        Some(h) => (**h).clone(),
        None => header_for(shape, vol.spacing),
    };
    let to_mm = space_unit_to_mm(&h).unwrap_or(1.0);
    let [sz, sy, sx] = vol.spacing;
    h.pixdim[1] = (sx / to_mm) as f32;
    h.pixdim[2] = (sy / to_mm) as f32;
    h.pixdim[3] = (sz / to_mm) as f32;
    // Display range of the source would be stale for other values (a mask written on a scan).
    h.cal_min = 0.0;
    h.cal_max = 0.0;
    h
}

fn write_with<T>(
    vol: &Volume<T>,
    path: &Path,
    write: impl FnOnce(&WriterOptions<'_>, ArrayView3<'_, T>) -> ::nifti::Result<()>,
) -> Result<(), VolumeError> {
    let err = |kind| VolumeError::new(path, kind);
    let gz = nifti_compression(path).ok_or_else(|| err(VolumeErrorKind::FileName))?;
    let shape = vol.shape();
    if shape.iter().any(|&n| n == 0 || n > MAX_DIM) {
        return Err(err(VolumeErrorKind::WriteShape { shape }));
    }
    if vol.spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(err(VolumeErrorKind::WriteSpacing {
            spacing: vol.spacing,
        }));
    }
    let header = header_to_write(vol);

    // The temporary name ends with the target's, so it keeps the suffix the crate reads.
    crate::durable::replace_with(path, |tmp| {
        let opts = WriterOptions::new(tmp)
            .reference_header(&header)
            .compress(gz);
        // [z, y, x] C order reversed is NIfTI's [x, y, z] Fortran order: no copy.
        write(&opts, vol.data.view().reversed_axes()).map_err(|e| match e {
            ::nifti::NiftiError::Io(e) => crate::durable::describe(e, "cannot write"),
            e => io::Error::other(e.to_string()),
        })
    })
    .map_err(|e| err(VolumeErrorKind::Write(e.to_string())))
}

/// `read` until `buf` is full or the reader ends; returns how many bytes were read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;
    use std::io::Write;

    fn ramp_i16(shape: [usize; 3]) -> Volume<i16> {
        let data = Array3::from_shape_fn((shape[0], shape[1], shape[2]), |(z, y, x)| {
            (z as i16 * 100 + y as i16 * 10 + x as i16) - 1000
        });
        Volume::new(data, [5.0, 0.45, 0.4])
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// Writes `vol` as plain .nii and returns the decoded bytes, for tests that patch headers.
    fn nii_bytes(dir: &Path, vol: &Volume<i16>) -> Vec<u8> {
        let p = dir.join("src.nii");
        write_i16(vol, &p).unwrap();
        fs::read(p).unwrap()
    }

    fn put_f32(bytes: &mut [u8], at: usize, v: f32) {
        bytes[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_i16(bytes: &mut [u8], at: usize, v: i16) {
        bytes[at..at + 2].copy_from_slice(&v.to_ne_bytes());
    }

    /// A gzip bomb: a valid 8×16×16 i16 volume followed by 64 MiB of zeros, with the gzip
    /// trailer (CRC, size) corrupted. A reader that stops at the header's data size reads the
    /// volume; one that decompresses on hits 64 MiB and then the bad CRC.
    #[test]
    fn a_gzip_bomb_is_read_only_up_to_the_headers_data_size() {
        let d = tempfile::tempdir().unwrap();
        let vol = ramp_i16([8, 16, 16]);
        let mut raw = nii_bytes(d.path(), &vol);
        raw.extend(std::iter::repeat_n(0u8, 64 << 20));
        let mut gz = gzip(&raw);
        let n = gz.len();
        for b in &mut gz[n - 8..] {
            *b ^= 0xff;
        }
        assert!(gz.len() < 1 << 20, "{} bytes", gz.len());
        let p = d.path().join("bomb.nii.gz");
        fs::write(&p, &gz).unwrap();
        let t = std::time::Instant::now();
        let back = read_volume(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.shape(), [8, 16, 16]);
        assert_eq!(back.data[[1, 2, 3]], vol.data[[1, 2, 3]] as f32);
        assert!(t.elapsed().as_millis() < 500, "{:?}", t.elapsed());
    }

    #[test]
    fn headers_above_the_size_limits_are_refused_before_reading() {
        let d = tempfile::tempdir().unwrap();
        let mut raw = nii_bytes(d.path(), &ramp_i16([2, 4, 4]));
        // 8192 × 8192 × 8192 voxels, declared by a 400-byte file.
        for k in 1..=3 {
            put_i16(&mut raw, DIM + 2 * k, 8192);
        }
        let p = d.path().join("huge.nii");
        fs::write(&p, &raw).unwrap();
        let e = read_volume(&p).unwrap_err().to_string();
        assert!(e.contains("larger than the limit"), "{e}");
        let e = read_header(&p).unwrap_err().to_string();
        assert!(e.contains("larger than the limit"), "{e}");
    }

    // Byte offsets in the NIfTI-1 header.
    const DIM: usize = 40;
    const DATATYPE: usize = 70;
    const BITPIX: usize = 72;
    const PIXDIM: usize = 76;
    const SCL_SLOPE: usize = 112;
    const SCL_INTER: usize = 116;
    const XYZT_UNITS: usize = 123;

    fn kind_of(r: Result<impl std::fmt::Debug, VolumeError>) -> VolumeErrorKind {
        r.expect_err("expected an error").kind
    }

    #[test]
    fn i16_round_trip_nii_and_gz_keeps_values_spacing_affine() {
        let dir = tempfile::tempdir().unwrap();
        let vol = ramp_i16([3, 4, 5]);
        for name in ["a.nii", "a.nii.gz"] {
            let p = dir.path().join(name);
            write_i16(&vol, &p).unwrap();
            let back = read_volume(&p).unwrap();
            assert_eq!(back.shape(), [3, 4, 5]);
            assert_eq!(back.spacing, [5.0, 0.45, 0.4]);
            assert!(back.data.is_standard_layout());
            assert_eq!(back.data, vol.data.mapv(|v| v as f32), "{name}");
            // [z, y, x] indexing: voxel (z=2, y=1, x=3).
            assert_eq!(back.data[[2, 1, 3]], 200.0 + 10.0 + 3.0 - 1000.0);
            let h = back.header.as_ref().unwrap();
            assert_eq!(h.datatype, NiftiType::Int16 as i16);
            assert_eq!(affine(h), affine(&header_for([3, 4, 5], vol.spacing)));
            // Written again with its own header: the affine survives a second trip.
            let again = dir.path().join(format!("b{name}"));
            write_f32(&back, &again).unwrap();
            let back2 = read_volume(&again).unwrap();
            assert_eq!(back2.data, back.data);
            assert_eq!(affine(back2.header.as_ref().unwrap()), affine(h));
        }
        // The gz file really is compressed.
        let gz = fs::read(dir.path().join("a.nii.gz")).unwrap();
        assert_eq!(gz[..2], GZIP_MAGIC);
    }

    #[test]
    fn reference_header_affine_is_preserved() {
        let dir = tempfile::tempdir().unwrap();
        let mut vol = ramp_i16([2, 3, 4]);
        let mut h = header_for([2, 3, 4], vol.spacing);
        // An oblique, shifted sform, as a scanner would write.
        h.srow_x = [0.0, -0.45, 0.0, 120.5];
        h.srow_y = [0.4, 0.0, 0.1, -33.0];
        h.srow_z = [0.0, 0.0, 5.0, 17.25];
        h.sform_code = 2;
        vol.header = Some(Box::new(h.clone()));
        let p = dir.path().join("ref.nii.gz");
        write_i16(&vol, &p).unwrap();
        let mask = read_label(&p).map(|_| ()).err();
        assert!(mask.is_some(), "negative HU are not labels");
        let back = read_volume(&p).unwrap();
        assert_eq!(affine(back.header.as_ref().unwrap()), affine(&h));
        // A mask written on that grid keeps it too.
        let m = back.map(|&v| u8::from(v > 0.0));
        let mp = dir.path().join("mask.nii");
        write_u8(&m, &mp).unwrap();
        let mback = read_label(&mp).unwrap();
        assert_eq!(mback.data, m.data);
        assert_eq!(mback.spacing, back.spacing);
        let mh = mback.header.as_ref().unwrap();
        assert_eq!(mh.datatype, NiftiType::Uint8 as i16);
        assert_eq!(affine(mh), affine(&h));
    }

    #[test]
    fn u8_and_f32_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let m = Volume::new(
            Array3::from_shape_fn((2, 3, 4), |(z, y, x)| ((z + y * x) % 6) as u8),
            [2.5, 0.5, 0.5],
        );
        let f = Volume::new(
            Array3::from_shape_fn((2, 3, 4), |(z, y, x)| {
                z as f32 * 0.25 - y as f32 * 1e3 + x as f32
            }),
            [1.0, 2.0, 3.0],
        );
        for ext in ["nii", "nii.gz"] {
            let mp = dir.path().join(format!("m.{ext}"));
            write_u8(&m, &mp).unwrap();
            let back = read_label(&mp).unwrap();
            assert_eq!(back.data, m.data);
            assert_eq!(back.spacing, m.spacing);
            let fp = dir.path().join(format!("f.{ext}"));
            write_f32(&f, &fp).unwrap();
            let back = read_volume(&fp).unwrap();
            assert_eq!(back.data, f.data);
            assert_eq!(back.spacing, f.spacing);
        }
    }

    #[test]
    fn scaled_i16_reads_in_hu_and_bad_slopes_read_unscaled() {
        let dir = tempfile::tempdir().unwrap();
        let vol = ramp_i16([2, 2, 3]);
        let base = nii_bytes(dir.path(), &vol);
        let raw = vol.data.mapv(|v| v as f32);
        // (slope, intercept, expected value of raw voxel v).
        type Case = (f32, f32, fn(f32) -> f32);
        let cases: [Case; 5] = [
            (0.5, -1024.0, |v| v * 0.5 - 1024.0),
            (2.0, 3.0, |v| v * 2.0 + 3.0),
            (0.0, -1024.0, |v| v),
            (f32::NAN, f32::NAN, |v| v),
            (f32::INFINITY, 0.0, |v| v),
        ];
        for (i, (slope, inter, expect)) in cases.iter().enumerate() {
            let mut b = base.clone();
            put_f32(&mut b, SCL_SLOPE, *slope);
            put_f32(&mut b, SCL_INTER, *inter);
            let p = dir.path().join(format!("s{i}.nii.gz"));
            fs::write(&p, gzip(&b)).unwrap();
            let back = read_volume(&p).unwrap();
            assert_eq!(back.data, raw.mapv(expect), "slope {slope} inter {inter}");
        }
    }

    #[test]
    fn float_labels_are_rounded_and_out_of_range_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = Volume::new(
            Array3::from_shape_vec((1, 1, 4), vec![0.0, 0.9999, 4.0001, 2.0]).unwrap(),
            [1.0; 3],
        );
        let p = dir.path().join("l.nii");
        write_f32(&f, &p).unwrap();
        assert_eq!(
            read_label(&p).unwrap().data.as_slice().unwrap(),
            &[0, 1, 4, 2]
        );
        let bad = f.map(|&v| if v == 2.0 { 256.0 } else { v });
        write_f32(&bad, &p).unwrap();
        assert!(
            matches!(kind_of(read_label(&p)), VolumeErrorKind::LabelValue { value } if value == 256.0)
        );
        let neg = f.map(|&v| if v == 2.0 { -1.0 } else { v });
        write_f32(&neg, &p).unwrap();
        let e = read_label(&p).unwrap_err();
        assert!(
            e.to_string().contains("l.nii") && e.to_string().contains("-1"),
            "{e}"
        );
    }

    #[test]
    fn compression_is_recognised_by_content_not_name() {
        let dir = tempfile::tempdir().unwrap();
        let vol = ramp_i16([2, 3, 4]);
        let bytes = nii_bytes(dir.path(), &vol);
        // Uncompressed bytes under a .gz name, gzip bytes under a .nii name.
        let a = dir.path().join("plain_named.nii.gz");
        fs::write(&a, &bytes).unwrap();
        let b = dir.path().join("gz_named.nii");
        fs::write(&b, gzip(&bytes)).unwrap();
        for p in [&a, &b] {
            assert_eq!(read_volume(p).unwrap().data, vol.data.mapv(|v| v as f32));
            assert_eq!(read_header(p).unwrap().shape, [2, 3, 4]);
        }
    }

    #[test]
    fn header_only_read_validates_and_reports_grid() {
        let dir = tempfile::tempdir().unwrap();
        let vol = ramp_i16([4, 3, 2]);
        let p = dir.path().join("h.nii.gz");
        write_i16(&vol, &p).unwrap();
        let h = read_header(&p).unwrap();
        assert_eq!(h.shape, [4, 3, 2]);
        assert_eq!(h.spacing, [5.0, 0.45, 0.4]);
        assert_eq!(h.datatype, NiftiType::Int16);
        assert_eq!(h.raw.len(), HEADER_BYTES);
        // A truncated uncompressed file is caught from its size alone.
        let bytes = nii_bytes(dir.path(), &vol);
        let t = dir.path().join("t.nii");
        fs::write(&t, &bytes[..bytes.len() - 3]).unwrap();
        assert!(matches!(
            kind_of(read_header(&t)),
            VolumeErrorKind::Truncated { .. }
        ));
    }

    #[test]
    fn units_convert_to_mm() {
        let dir = tempfile::tempdir().unwrap();
        let vol = ramp_i16([2, 2, 2]);
        let mut b = nii_bytes(dir.path(), &vol);
        b[XYZT_UNITS] = 1 | 8; // metres
        put_f32(&mut b, PIXDIM + 4, 0.0005);
        put_f32(&mut b, PIXDIM + 8, 0.0005);
        put_f32(&mut b, PIXDIM + 12, 0.005);
        let p = dir.path().join("m.nii");
        fs::write(&p, &b).unwrap();
        let v = read_volume(&p).unwrap();
        for (got, want) in v.spacing.iter().zip([5.0, 0.5, 0.5]) {
            assert!((got - want).abs() < 1e-4, "{:?}", v.spacing);
        }
        // Written back in its own unit: pixdim stays in metres, the spacing in mm.
        let q = dir.path().join("m2.nii");
        write_f32(&v, &q).unwrap();
        let h = read_header(&q).unwrap();
        assert!((h.header.pixdim[3] - 0.005).abs() < 1e-7);
        assert!((h.spacing[0] - 5.0).abs() < 1e-4);
        // Unknown unit: mm assumed.
        b[XYZT_UNITS] = 0;
        fs::write(&p, &b).unwrap();
        assert!((read_header(&p).unwrap().spacing[0] - 0.005).abs() < 1e-9);
    }

    #[test]
    fn four_d_with_one_frame_is_squeezed_and_more_frames_refused() {
        let dir = tempfile::tempdir().unwrap();
        let vol = ramp_i16([2, 3, 4]);
        let mut b = nii_bytes(dir.path(), &vol);
        put_i16(&mut b, DIM, 4);
        put_i16(&mut b, DIM + 8, 1);
        let p = dir.path().join("t1.nii");
        fs::write(&p, &b).unwrap();
        assert_eq!(read_volume(&p).unwrap().data, vol.data.mapv(|v| v as f32));
        // t = 2: not a 3D volume (the sizes still add up, as z = 1 and t = 2).
        put_i16(&mut b, DIM + 6, 1);
        put_i16(&mut b, DIM + 8, 2);
        fs::write(&p, &b).unwrap();
        assert!(matches!(
            kind_of(read_volume(&p)),
            VolumeErrorKind::NotThreeD { .. }
        ));
        // 2D.
        put_i16(&mut b, DIM, 2);
        fs::write(&p, &b).unwrap();
        assert!(matches!(
            kind_of(read_volume(&p)),
            VolumeErrorKind::NotThreeD { .. }
        ));
    }

    /// Each bad input gives one error that names the file; none panics.
    #[test]
    fn bad_inputs_give_one_clear_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let vol = ramp_i16([2, 3, 4]);
        let good = nii_bytes(dir.path(), &vol);
        let patched = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            b
        };
        let nan_vol = Volume::new(Array3::from_elem((1, 2, 2), 1.0f32), [1.0; 3]);
        let nan_path = dir.path().join("nan_src.nii");
        write_f32(&nan_vol, &nan_path).unwrap();
        let mut nan_bytes = fs::read(&nan_path).unwrap();
        put_f32(&mut nan_bytes, 352 + 4, f32::NAN);

        let gz = gzip(&good);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty.nii.gz", vec![], "file is empty"),
            (
                "truncgz.nii.gz",
                gz[..gz.len() / 2].to_vec(),
                "truncated or corrupt gzip",
            ),
            (
                "junkgz.nii.gz",
                vec![0x1f, 0x8b, 8, 0, 1, 2, 3],
                "truncated or corrupt gzip",
            ),
            (
                "short.nii",
                good[..100].to_vec(),
                "shorter than a NIfTI-1 header",
            ),
            (
                "magic.nii",
                patched(&|b| b[344..348].copy_from_slice(b"abcd")),
                "expected magic",
            ),
            (
                "pair.nii",
                patched(&|b| b[344..348].copy_from_slice(b"ni1\0")),
                ".hdr/.img",
            ),
            (
                "zero.nii",
                patched(&|b| put_f32(b, PIXDIM + 4, 0.0)),
                "pixdim[1] = 0",
            ),
            (
                "nanpix.nii",
                patched(&|b| put_f32(b, PIXDIM + 8, f32::NAN)),
                "pixdim[2] = NaN",
            ),
            (
                "dim5.nii",
                patched(&|b| {
                    put_i16(b, DIM, 4);
                    put_i16(b, DIM + 8, 5)
                }),
                "3D volume",
            ),
            (
                "dim0.nii",
                patched(&|b| put_i16(b, DIM + 2, 0)),
                "3D volume",
            ),
            (
                "type.nii",
                patched(&|b| put_i16(b, DATATYPE, 128)),
                "unsupported datatype",
            ),
            (
                "bitpix.nii",
                patched(&|b| put_i16(b, BITPIX, 8)),
                "bitpix 8",
            ),
            (
                "trunc.nii.gz",
                gzip(&good[..good.len() - 5]),
                "truncated voxel data",
            ),
            ("nan.nii.gz", gzip(&nan_bytes), "NaN or infinite"),
            (
                "nifti2.nii",
                patched(&|b| b[..4].copy_from_slice(&540i32.to_le_bytes())),
                "NIfTI-2",
            ),
        ];
        for (name, bytes, msg) in &cases {
            let p = dir.path().join(name);
            fs::write(&p, bytes).unwrap();
            let e = read_volume(&p).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(name) && text.contains(msg), "{name}: {text}");
            assert_eq!(e.path, p);
        }
        // A negative voxel size is a flip, not an error: spacing is |pixdim|.
        let neg = dir.path().join("neg.nii.gz");
        fs::write(&neg, gzip(&patched(&|b| put_f32(b, PIXDIM + 12, -5.0)))).unwrap();
        assert_eq!(read_volume(&neg).unwrap().spacing[0], 5.0);
        // A folder, or a missing file: an I/O error naming it.
        let e = read_volume(dir.path()).unwrap_err();
        assert!(matches!(e.kind, VolumeErrorKind::Io(_)), "{e}");
        let e = read_header(dir.path().join("missing.nii")).unwrap_err();
        assert!(e.to_string().contains("missing.nii"), "{e}");
    }

    #[test]
    fn writes_are_checked_and_leave_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let vol = ramp_i16([2, 2, 2]);
        assert!(matches!(
            kind_of(write_i16(&vol, dir.path().join("x.img"))),
            VolumeErrorKind::FileName
        ));
        let bad = Volume::new(vol.data.clone(), [0.0, 1.0, 1.0]);
        assert!(matches!(
            kind_of(write_i16(&bad, dir.path().join("x.nii"))),
            VolumeErrorKind::WriteSpacing { .. }
        ));
        let nan = Volume::new(Array3::from_elem((1, 1, 2), f32::NAN), [1.0; 3]);
        assert!(matches!(
            kind_of(write_f32(&nan, dir.path().join("x.nii"))),
            VolumeErrorKind::NonFinite { count: 2, .. }
        ));
        // Into a missing folder: an error naming the file, and nothing left behind.
        let e = write_i16(&vol, dir.path().join("no/such/x.nii.gz")).unwrap_err();
        assert!(matches!(e.kind, VolumeErrorKind::Write(_)) && e.to_string().contains("x.nii.gz"));
        // Overwriting replaces the file; only the target is left in the folder.
        let p = dir.path().join("x.nii.gz");
        write_i16(&vol, &p).unwrap();
        write_i16(&vol.map(|v| v + 1), &p).unwrap();
        assert_eq!(
            read_volume(&p).unwrap().data,
            vol.data.mapv(|v| v as f32 + 1.0)
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.nii.gz")]);
    }

    #[test]
    fn big_endian_files_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let mut vol = ramp_i16([2, 3, 4]);
        let h = NiftiHeader {
            endianness: ::nifti::Endianness::Big,
            ..header_for([2, 3, 4], vol.spacing)
        };
        vol.header = Some(Box::new(h));
        let p = dir.path().join("be.nii");
        write_i16(&vol, &p).unwrap();
        let bytes = fs::read(&p).unwrap();
        assert_eq!(bytes[..4], 348i32.to_be_bytes(), "written big-endian");
        let back = read_volume(&p).unwrap();
        assert_eq!(back.data, vol.data.mapv(f32::from));
        assert_eq!(back.spacing, [5.0, 0.45, 0.4]);
    }

    #[test]
    fn header_for_centres_the_grid() {
        let h = header_for([3, 5, 7], [5.0, 0.5, 0.25]);
        let a = affine(&h);
        // The centre voxel (x=3, y=2, z=1) maps to the origin.
        let world: Vec<f64> = (0..3)
            .map(|r| a[r][0] * 3.0 + a[r][1] * 2.0 + a[r][2] * 1.0 + a[r][3])
            .collect();
        assert!(world.iter().all(|w| w.abs() < 1e-6), "{world:?}");
        // qform (identity quaternion) and sform agree.
        let q = NiftiHeader {
            sform_code: 0,
            ..h.clone()
        };
        assert_eq!(affine(&q), a);
    }
}
