//! Time of phantom synthesis (figures, not a test).
//!
//! `cargo bench --bench phantom` prints:
//! - 30 TBI and 30 SAH cases at the default grid (64×64×24, 3.4×3.4×6 mm), in memory, on all
//!   rayon threads (`RAYON_NUM_THREADS` to pin), and per case on one thread;
//! - `write_cohort` of 30 SAH cases (synthesis + gzip NIfTI + JSON, atomic);
//! - one case at a realistic grid (512×512×40, 0.45×0.45×5 mm).
//!
//! With `PHANTOM_PNG=DIR` it also writes a montage per cohort (every slice of case 1, brain
//! window L40/W80, the label in red on the right copy) to look at the images.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use ranksweep::data::phantom::{
    Cohort, PhantomCase, PhantomConfig, synthesize, synthesize_case, write_cohort,
};

fn main() {
    let threads = rayon::current_num_threads();
    for cohort in [Cohort::Tbi, Cohort::Sah] {
        let cfg = PhantomConfig::new(cohort, 30, 1);
        let start = Instant::now();
        let cases = synthesize(&cfg).expect("valid config");
        let all = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        pool.install(|| synthesize_case(&cfg, 0).expect("valid config"));
        let one = start.elapsed().as_secs_f64();
        println!(
            "phantom {cohort}: 30 cases at 64x64x24 in {all:.2} s on {threads} threads; one case on 1 thread {one:.3} s"
        );
        if let Ok(dir) = std::env::var("PHANTOM_PNG") {
            let path = Path::new(&dir).join(format!("{}.png", cases[1].id));
            montage(&cases[1], &path, 4);
            println!("  wrote {}", path.display());
        }
    }

    let dir = tempfile::tempdir().expect("temporary folder");
    let start = Instant::now();
    write_cohort(
        &PhantomConfig::new(Cohort::Sah, 30, 1),
        &dir.path().join("sah"),
    )
    .expect("write");
    println!(
        "write_cohort sah: 30 cases in {:.2} s",
        start.elapsed().as_secs_f64()
    );

    let cfg = PhantomConfig {
        shape: [40, 512, 512],
        spacing: [5.0, 0.45, 0.45],
        ..PhantomConfig::new(Cohort::Sah, 1, 1)
    };
    let start = Instant::now();
    synthesize_case(&cfg, 0).expect("valid config");
    println!(
        "phantom sah: one case at 512x512x40 in {:.2} s on {threads} threads",
        start.elapsed().as_secs_f64()
    );
}

/// Every slice of `case` side by side with its label (red), brain window, `scale`× pixels.
fn montage(case: &PhantomCase, path: &Path, scale: usize) {
    let [nz, ny, nx] = case.image.shape();
    let cols = 6;
    let rows = nz.div_ceil(cols);
    let (tw, th) = (2 * nx * scale, ny * scale);
    let (w, h) = (tw * cols, th * rows);
    let mut rgb = vec![0u8; w * h * 3];
    for z in 0..nz {
        let (ox, oy) = ((z % cols) * tw, (z / cols) * th);
        for y in 0..ny {
            for x in 0..nx {
                // Anterior up: image rows run from +y down.
                let v = case.image.data[[z, ny - 1 - y, x]] as f64;
                let g = ((v - 0.0) / 80.0 * 255.0).clamp(0.0, 255.0) as u8;
                let red = case.label.data[[z, ny - 1 - y, x]] == 1;
                for sy in 0..scale {
                    for sx in 0..scale {
                        let p = ((oy + y * scale + sy) * w + ox + x * scale + sx) * 3;
                        rgb[p..p + 3].copy_from_slice(&[g, g, g]);
                        let q = p + nx * scale * 3;
                        let px = if red { [255, g / 3, g / 3] } else { [g, g, g] };
                        rgb[q..q + 3].copy_from_slice(&px);
                    }
                }
            }
        }
    }
    write_png(path, w, h, &rgb);
}

/// A minimal 8-bit RGB PNG: one zlib-compressed IDAT, filter 0 on every row.
fn write_png(path: &Path, w: usize, h: usize, rgb: &[u8]) {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let mut raw = Vec::with_capacity((w * 3 + 1) * h);
    for row in rgb.chunks(w * 3) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&raw).expect("in memory");
    let idat = z.finish().expect("in memory");
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let body: Vec<u8> = kind.iter().chain(data).copied().collect();
        png.extend_from_slice(&body);
        png.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(w as u32).to_be_bytes());
    ihdr.extend_from_slice(&(h as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &idat);
    chunk(b"IEND", &[]);
    std::fs::write(path, png).expect("writable PNG path");
}
