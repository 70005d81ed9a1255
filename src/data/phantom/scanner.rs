//! Scanner effects on the averaged phantom: a per-cohort HU offset, cupping, the hyperdense rim
//! inside the inner table, beam-hardening streaks and the dark interpetrous band at the skull
//! base, in-plane blur, correlated noise, then rounding to integer HU.
//!
//! Everything here acts on the output grid (the fine grid is gone by then), in mm, so the same
//! case looks alike at any resolution apart from partial volume and noise grain.

use ndarray::{Array2, Array3, Axis};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use super::Cohort;
use super::anatomy::Head;
use super::meta::ScannerMeta;
use super::raster::Grid;
use super::shapes::{V3, v3};

/// A straight streak in the axial plane from `origin` along `dir`.
#[derive(Clone, Copy, Debug)]
struct Streak {
    origin: V3,
    dir: V3,
    hu: f64,
    width_mm: f64,
    length_mm: f64,
}

#[derive(Clone, Debug)]
pub(crate) struct Scanner {
    pub blur_sigma_mm: f64,
    pub noise_sd_hu: f64,
    /// Noise grain: Gaussian correlation length in output voxels (reconstruction kernel).
    noise_grain_vox: f64,
    pub hu_offset: f64,
    cupping_hu: f64,
    pub rim_hu: f64,
    rim_mm: f64,
    bar_hu: f64,
    streaks: Vec<Streak>,
    /// Height and z half-width of the skull-base artefacts.
    base_z: f64,
    base_sigma_z: f64,
    petrous: [V3; 2],
}

fn uni<R: Rng>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

impl Scanner {
    pub fn sample<R: Rng>(rng: &mut R, cohort: Cohort, head: &Head) -> Scanner {
        let sah = cohort == Cohort::Sah;
        let petrous = [head.petrous[0].c, head.petrous[1].c];
        let n = rng.random_range(3..=6);
        let streaks = (0..n)
            .map(|k| {
                let from = if k % 3 == 2 {
                    head.at(0.0, 7.0, -40.0)
                } else {
                    petrous[k % 2]
                };
                let a = uni(rng, 0.0, std::f64::consts::TAU);
                Streak {
                    origin: v3(from.x, from.y, 0.0),
                    dir: v3(a.cos(), a.sin(), 0.0),
                    hu: if k % 2 == 0 {
                        uni(rng, 8.0, 25.0)
                    } else {
                        -uni(rng, 8.0, 25.0)
                    },
                    width_mm: uni(rng, 1.5, 3.0),
                    length_mm: uni(rng, 35.0, 70.0),
                }
            })
            .collect();
        Scanner {
            blur_sigma_mm: uni(rng, 0.4, 0.8),
            noise_sd_hu: if sah {
                uni(rng, 4.0, 8.0)
            } else {
                uni(rng, 3.0, 6.0)
            },
            noise_grain_vox: uni(rng, 0.6, 1.0),
            // Different scanners, different calibration.
            hu_offset: if sah {
                uni(rng, 2.0, 4.0)
            } else {
                uni(rng, -1.0, 1.0)
            },
            cupping_hu: uni(rng, 0.0, 3.0),
            rim_hu: uni(rng, 8.0, 18.0),
            rim_mm: uni(rng, 2.5, 4.5),
            bar_hu: uni(rng, 12.0, 30.0),
            streaks,
            base_z: (petrous[0].z + petrous[1].z) / 2.0,
            base_sigma_z: uni(rng, 7.0, 11.0),
            petrous,
        }
    }

    pub fn meta(&self) -> ScannerMeta {
        ScannerMeta {
            blur_sigma_mm: self.blur_sigma_mm,
            noise_sd_hu: self.noise_sd_hu,
            hu_offset: self.hu_offset,
            rim_hu: self.rim_hu,
            streaks: self.streaks.len(),
        }
    }

    /// HU added at `p` by offset, cupping, rim and skull-base artefacts.
    fn shading(&self, head: &Head, p: V3) -> f64 {
        let mut hu = self.hu_offset;
        let depth = head.under_inner_table(p);
        if depth <= 0.0 {
            return hu;
        }
        let r_in = head.brain_radius(p.unit()) + head.csf_rim_mm;
        hu -= self.cupping_hu * (1.0 - (p.norm() / r_in).powi(2)).max(0.0);
        if depth < self.rim_mm {
            hu += self.rim_hu * (1.0 - depth / self.rim_mm).powi(2);
        }
        let zfall = (-(p.z - self.base_z).powi(2) / (2.0 * self.base_sigma_z.powi(2))).exp();
        if zfall > 1e-3 {
            let q = v3(p.x, p.y, 0.0);
            // Interpetrous band: distance to the segment joining the petrous ridges.
            let (a, b) = (
                v3(self.petrous[0].x, self.petrous[0].y, 0.0),
                v3(self.petrous[1].x, self.petrous[1].y, 0.0),
            );
            let t = ((q - a).dot(b - a) / (b - a).dot(b - a)).clamp(0.0, 1.0);
            let d = (q - (a + (b - a) * t)).norm();
            hu -= self.bar_hu * (-d * d / (2.0 * 5.0f64.powi(2))).exp() * zfall;
            for s in &self.streaks {
                let along = (q - s.origin).dot(s.dir);
                if along <= 0.0 {
                    continue;
                }
                let across = (q - s.origin - s.dir * along).norm();
                hu += s.hu
                    * (-across * across / (2.0 * s.width_mm.powi(2))).exp()
                    * (-along / s.length_mm).exp()
                    * zfall;
            }
        }
        hu
    }

    /// Turns the averaged phantom (`hu`, mean HU per voxel) into the scan.
    pub fn apply<R: Rng>(
        &self,
        rng: &mut R,
        grid: &Grid,
        head: &Head,
        hu: &Array3<f32>,
    ) -> Array3<i16> {
        let mut img = hu.clone();
        for ((iz, iy, ix), v) in img.indexed_iter_mut() {
            *v += self.shading(head, grid.coarse_pos(iz, iy, ix)) as f32;
        }
        let blur = gaussian_kernel(
            self.blur_sigma_mm / grid.spacing[2],
            self.blur_sigma_mm / grid.spacing[1],
        );
        for mut slice in img.axis_iter_mut(Axis(0)) {
            let out = convolve2d(&slice.to_owned(), &blur.0, &blur.1);
            slice.assign(&out);
        }
        self.add_noise(rng, &mut img);
        img.mapv(|v| v.round().clamp(-1024.0, 3071.0) as i16)
    }
}

impl Scanner {
    /// Correlated noise: white noise blurred in-plane, rescaled to the wanted SD.
    fn add_noise<R: Rng>(&self, rng: &mut R, img: &mut Array3<f32>) {
        let (_, ny, nx) = img.dim();
        let (kx, ky) = gaussian_kernel(self.noise_grain_vox, self.noise_grain_vox);
        let energy = kx.iter().map(|k| k * k).sum::<f64>() * ky.iter().map(|k| k * k).sum::<f64>();
        let gain = self.noise_sd_hu / energy.sqrt();
        for mut slice in img.axis_iter_mut(Axis(0)) {
            let white = Array2::from_shape_simple_fn((ny, nx), || StandardNormal.sample(rng));
            let noise = convolve2d(&white, &kx, &ky);
            slice.zip_mut_with(&noise, |v, n| *v += (*n as f64 * gain) as f32);
        }
    }
}

/// Normalized 1-D Gaussian kernels along x and y for sigmas in voxels (radius ≥ 1).
fn gaussian_kernel(sigma_x: f64, sigma_y: f64) -> (Vec<f64>, Vec<f64>) {
    let k = |s: f64| {
        let s = s.max(1e-3);
        let r = (3.0 * s).ceil().max(1.0) as i64;
        let w: Vec<f64> = (-r..=r)
            .map(|i| (-(i * i) as f64 / (2.0 * s * s)).exp())
            .collect();
        let sum: f64 = w.iter().sum();
        w.into_iter().map(|v| v / sum).collect::<Vec<_>>()
    };
    (k(sigma_x), k(sigma_y))
}

/// Separable convolution of a `[y, x]` slice, edges clamped.
fn convolve2d(a: &Array2<f32>, kx: &[f64], ky: &[f64]) -> Array2<f32> {
    let (ny, nx) = a.dim();
    let rx = (kx.len() / 2) as i64;
    let ry = (ky.len() / 2) as i64;
    let mut tmp = Array2::<f32>::zeros((ny, nx));
    for y in 0..ny {
        for x in 0..nx {
            let mut s = 0.0f64;
            for (j, w) in kx.iter().enumerate() {
                let xx = (x as i64 + j as i64 - rx).clamp(0, nx as i64 - 1) as usize;
                s += w * a[[y, xx]] as f64;
            }
            tmp[[y, x]] = s as f32;
        }
    }
    let mut out = Array2::<f32>::zeros((ny, nx));
    for y in 0..ny {
        for x in 0..nx {
            let mut s = 0.0f64;
            for (j, w) in ky.iter().enumerate() {
                let yy = (y as i64 + j as i64 - ry).clamp(0, ny as i64 - 1) as usize;
                s += w * tmp[[yy, x]] as f64;
            }
            out[[y, x]] = s as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn noise_has_the_requested_sd_and_is_correlated() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let head = Head::sample(&mut rng, Cohort::Sah, false);
        let sc = Scanner::sample(&mut rng, Cohort::Sah, &head);
        let mut img = Array3::<f32>::zeros((2, 64, 64));
        sc.add_noise(&mut rng, &mut img);
        let img = img.mapv(|v| v as f64);
        let n = img.len() as f64;
        let mean = img.sum() / n;
        let sd = (img.mapv(|v| (v - mean).powi(2)).sum() / n).sqrt();
        assert!(
            (sd / sc.noise_sd_hu - 1.0).abs() < 0.15,
            "sd {sd} vs {}",
            sc.noise_sd_hu
        );
        // Neighbours are correlated (white noise would give ~0).
        let s = img.index_axis(Axis(0), 0);
        let mut c = 0.0;
        for y in 0..64 {
            for x in 0..63 {
                c += (s[[y, x]] - mean) * (s[[y, x + 1]] - mean);
            }
        }
        let r = c / (64.0 * 63.0) / (sd * sd);
        assert!(r > 0.2, "lag-1 correlation {r}");
    }

    #[test]
    fn rim_brightens_just_inside_the_inner_table() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let head = Head::sample(&mut rng, Cohort::Tbi, false);
        let mut sc = Scanner::sample(&mut rng, Cohort::Tbi, &head);
        sc.streaks.clear();
        sc.bar_hu = 0.0;
        let u = v3(0.7, 0.2, 0.6).unit();
        let near = sc.shading(&head, head.point_under_table(u, 0.3));
        let deep = sc.shading(&head, head.point_under_table(u, 15.0));
        assert!(near - deep > 0.6 * sc.rim_hu, "near {near} deep {deep}");
    }

    #[test]
    fn blur_keeps_the_mean() {
        let (kx, ky) = gaussian_kernel(1.3, 0.2);
        assert!((kx.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let a = Array2::from_shape_fn((9, 9), |(y, x)| if y == 4 && x == 4 { 81.0 } else { 0.0 });
        let b = convolve2d(&a, &kx, &ky);
        assert!((b.sum() - 81.0).abs() < 1e-3);
        assert!(b[[4, 5]] > 0.0 && b[[4, 4]] < 81.0);
    }
}
