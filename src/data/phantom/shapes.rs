//! Geometry in mm for the phantoms: a small 3-vector, boxes, and the three primitives every
//! structure is drawn from (ellipsoid, elliptic plate, ellipsoidal shell).
//!
//! World axes follow NIfTI RAS: `x` to the patient's right, `y` anterior, `z` superior, origin
//! at the brain centre. Each primitive answers three questions the rasterizer asks: its bounding
//! box (to visit only nearby samples), whether a point is inside, and how deep a point lies
//! under its wall (used to coat compartments with a thin layer of blood).

use std::ops::{Add, Mul, Neg, Sub};

/// A point or direction in mm, `(x, y, z)`.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub(crate) struct V3 {
    pub x: f64,
    pub y: f64,
    pub z: f64,
}

pub(crate) const fn v3(x: f64, y: f64, z: f64) -> V3 {
    V3 { x, y, z }
}

impl V3 {
    pub fn dot(self, o: V3) -> f64 {
        self.x * o.x + self.y * o.y + self.z * o.z
    }

    pub fn cross(self, o: V3) -> V3 {
        v3(
            self.y * o.z - self.z * o.y,
            self.z * o.x - self.x * o.z,
            self.x * o.y - self.y * o.x,
        )
    }

    pub fn norm(self) -> f64 {
        self.dot(self).sqrt()
    }

    /// The unit vector along `self` (the zero vector stays zero).
    pub fn unit(self) -> V3 {
        let n = self.norm();
        if n > 0.0 { self * (1.0 / n) } else { self }
    }

    /// Componentwise product (scales a reference-brain position to this case's brain).
    pub fn scale(self, s: V3) -> V3 {
        v3(self.x * s.x, self.y * s.y, self.z * s.z)
    }

    /// A unit vector orthogonal to the unit vector `self`.
    pub fn any_orthogonal(self) -> V3 {
        let helper = if self.x.abs() < 0.9 {
            v3(1.0, 0.0, 0.0)
        } else {
            v3(0.0, 1.0, 0.0)
        };
        self.cross(helper).unit()
    }
}

impl Add for V3 {
    type Output = V3;
    fn add(self, o: V3) -> V3 {
        v3(self.x + o.x, self.y + o.y, self.z + o.z)
    }
}

impl Sub for V3 {
    type Output = V3;
    fn sub(self, o: V3) -> V3 {
        v3(self.x - o.x, self.y - o.y, self.z - o.z)
    }
}

impl Mul<f64> for V3 {
    type Output = V3;
    fn mul(self, s: f64) -> V3 {
        v3(self.x * s, self.y * s, self.z * s)
    }
}

impl Neg for V3 {
    type Output = V3;
    fn neg(self) -> V3 {
        v3(-self.x, -self.y, -self.z)
    }
}

/// An axis-aligned box in mm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Aabb {
    pub lo: V3,
    pub hi: V3,
}

impl Aabb {
    pub fn around(c: V3, half: V3) -> Aabb {
        Aabb {
            lo: c - half,
            hi: c + half,
        }
    }

    pub fn pad(self, mm: f64) -> Aabb {
        let d = v3(mm, mm, mm);
        Aabb {
            lo: self.lo - d,
            hi: self.hi + d,
        }
    }
}

/// What the rasterizer needs from a structure.
pub(crate) trait Shape {
    fn bbox(&self) -> Aabb;
    fn contains(&self, p: V3) -> bool;
    /// Distance in mm from `p` (inside) to the nearest wall, approximately; 0 on the wall.
    fn wall_depth(&self, p: V3) -> f64;
    /// The `x` interval where the row `(y, z)` may be inside (`None`: the row misses the shape).
    /// Lets the rasterizer skip most of the box of a thin oblique shape.
    fn x_span(&self, _y: f64, _z: f64) -> Option<(f64, f64)> {
        let b = self.bbox();
        Some((b.lo.x, b.hi.x))
    }
}

/// An ellipsoid with orthonormal axes `axes` and semi-axes `semi` (mm).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Ellipsoid {
    pub c: V3,
    pub axes: [V3; 3],
    pub semi: [f64; 3],
}

impl Ellipsoid {
    pub fn aligned(c: V3, semi: V3) -> Ellipsoid {
        Ellipsoid {
            c,
            axes: [v3(1.0, 0.0, 0.0), v3(0.0, 1.0, 0.0), v3(0.0, 0.0, 1.0)],
            semi: [semi.x, semi.y, semi.z],
        }
    }

    /// An ellipsoid whose first axis points along `u` (any direction); `semi` is along
    /// `(u, v, u × v)` where `v` is `up` made orthogonal to `u`.
    pub fn oriented(c: V3, u: V3, up: V3, semi: [f64; 3]) -> Ellipsoid {
        let u = u.unit();
        let mut v = (up - u * up.dot(u)).unit();
        if v.norm() == 0.0 {
            v = u.any_orthogonal();
        }
        Ellipsoid {
            c,
            axes: [u, v, u.cross(v)],
            semi,
        }
    }

    /// Squared normalized radius: < 1 inside, 1 on the surface.
    pub fn rho2(&self, p: V3) -> f64 {
        let d = p - self.c;
        let mut s = 0.0;
        for k in 0..3 {
            let t = d.dot(self.axes[k]) / self.semi[k];
            s += t * t;
        }
        s
    }

    fn min_semi(&self) -> f64 {
        self.semi[0].min(self.semi[1]).min(self.semi[2])
    }
}

impl Shape for Ellipsoid {
    fn bbox(&self) -> Aabb {
        // Exact half extents of a rotated ellipsoid: sqrt(sum_k (a_k.e * s_k)^2) per world axis.
        let mut h = [0.0f64; 3];
        for k in 0..3 {
            let a = self.axes[k] * self.semi[k];
            h[0] += a.x * a.x;
            h[1] += a.y * a.y;
            h[2] += a.z * a.z;
        }
        Aabb::around(self.c, v3(h[0].sqrt(), h[1].sqrt(), h[2].sqrt()))
    }

    fn contains(&self, p: V3) -> bool {
        self.rho2(p) < 1.0
    }

    fn wall_depth(&self, p: V3) -> f64 {
        ((1.0 - self.rho2(p).sqrt()) * self.min_semi()).max(0.0)
    }

    fn x_span(&self, y: f64, z: f64) -> Option<(f64, f64)> {
        // rho² is quadratic in dx = x − c.x: a·dx² + 2b·dx + c.
        let (dy, dz) = (y - self.c.y, z - self.c.z);
        let (mut a, mut b, mut c) = (0.0, 0.0, 0.0);
        for k in 0..3 {
            let al = self.axes[k].x / self.semi[k];
            let be = (self.axes[k].y * dy + self.axes[k].z * dz) / self.semi[k];
            a += al * al;
            b += al * be;
            c += be * be;
        }
        let disc = b * b - a * (c - 1.0);
        if disc < 0.0 {
            return None;
        }
        let r = disc.sqrt();
        Some((self.c.x + (-b - r) / a, self.c.x + (-b + r) / a))
    }
}

/// A thin elliptic plate: centre `c`, in-plane unit axes `u`, `v` with half lengths `hu`, `hv`,
/// half thickness `ht` along `n = u × v`. Sulci, fissures and membranes are plates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Plate {
    pub c: V3,
    pub u: V3,
    pub v: V3,
    pub n: V3,
    pub hu: f64,
    pub hv: f64,
    pub ht: f64,
}

impl Plate {
    /// `v` is `v_hint` made orthogonal to `u`.
    pub fn new(c: V3, u: V3, v_hint: V3, hu: f64, hv: f64, ht: f64) -> Plate {
        let u = u.unit();
        let mut v = (v_hint - u * v_hint.dot(u)).unit();
        if v.norm() == 0.0 {
            v = u.any_orthogonal();
        }
        Plate {
            c,
            u,
            v,
            n: u.cross(v),
            hu,
            hv,
            ht,
        }
    }

    /// The same plate, `extra` mm thicker on each side.
    pub fn thickened(&self, extra: f64) -> Plate {
        Plate {
            ht: self.ht + extra,
            ..*self
        }
    }
}

impl Shape for Plate {
    fn bbox(&self) -> Aabb {
        // Exact for the elliptic disc, plus the thickness.
        let h = |a: f64, b: f64, n: f64| {
            ((a * self.hu).powi(2) + (b * self.hv).powi(2)).sqrt() + n.abs() * self.ht
        };
        Aabb::around(
            self.c,
            v3(
                h(self.u.x, self.v.x, self.n.x),
                h(self.u.y, self.v.y, self.n.y),
                h(self.u.z, self.v.z, self.n.z),
            ),
        )
    }

    fn contains(&self, p: V3) -> bool {
        let d = p - self.c;
        let t = d.dot(self.n);
        if t.abs() > self.ht {
            return false;
        }
        let a = d.dot(self.u) / self.hu;
        let b = d.dot(self.v) / self.hv;
        a * a + b * b <= 1.0
    }

    fn wall_depth(&self, p: V3) -> f64 {
        (self.ht - (p - self.c).dot(self.n).abs()).max(0.0)
    }

    fn x_span(&self, y: f64, z: f64) -> Option<(f64, f64)> {
        let b = self.bbox();
        if self.n.x.abs() < 0.2 {
            return Some((b.lo.x, b.hi.x));
        }
        // |n·(p − c)| ≤ ht is a slab: an interval of x along the row.
        let rest = self.n.y * (y - self.c.y) + self.n.z * (z - self.c.z);
        let x0 = self.c.x + (-self.ht - rest) / self.n.x;
        let x1 = self.c.x + (self.ht - rest) / self.n.x;
        Some((x0.min(x1).max(b.lo.x), x0.max(x1).min(b.hi.x)))
    }
}

/// The space inside `outer` and outside `inner` (the perimesencephalic cistern is a band around
/// the midbrain: an inner ellipsoid taller than the outer one leaves no caps).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Shell {
    pub outer: Ellipsoid,
    pub inner: Ellipsoid,
}

impl Shape for Shell {
    fn bbox(&self) -> Aabb {
        self.outer.bbox()
    }

    fn contains(&self, p: V3) -> bool {
        self.outer.contains(p) && !self.inner.contains(p)
    }

    fn x_span(&self, y: f64, z: f64) -> Option<(f64, f64)> {
        self.outer.x_span(y, z)
    }

    fn wall_depth(&self, p: V3) -> f64 {
        let to_outer = self.outer.wall_depth(p);
        let to_inner = (self.inner.rho2(p).sqrt() - 1.0) * self.inner.min_semi();
        to_outer.min(to_inner.max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_ellipsoid_box_is_tight() {
        let e = Ellipsoid::oriented(
            v3(1.0, 2.0, 3.0),
            v3(1.0, 1.0, 0.0),
            v3(0.0, 0.0, 1.0),
            [10.0, 3.0, 2.0],
        );
        let b = e.bbox();
        // Half extent along x: sqrt((10/√2)² + (2/√2)²) = sqrt(52) ≈ 7.21.
        assert!((b.hi.x - 1.0 - 52f64.sqrt()).abs() < 1e-9, "{b:?}");
        assert!((b.hi.z - 3.0 - 3.0).abs() < 1e-9, "{b:?}");
        // The tip along the long axis is inside, just beyond it is not.
        let tip = v3(1.0, 2.0, 3.0) + v3(1.0, 1.0, 0.0).unit() * 9.9;
        assert!(e.contains(tip));
        assert!(!e.contains(v3(1.0, 2.0, 3.0) + v3(1.0, 1.0, 0.0).unit() * 10.1));
    }

    #[test]
    fn plate_thickness_and_wall_depth() {
        let p = Plate::new(
            v3(0.0, 0.0, 0.0),
            v3(0.0, 1.0, 0.0),
            v3(0.0, 0.0, 1.0),
            20.0,
            10.0,
            1.5,
        );
        assert_eq!(p.n, v3(1.0, 0.0, 0.0));
        assert!(p.contains(v3(1.4, 5.0, 5.0)));
        assert!(!p.contains(v3(1.6, 5.0, 5.0)));
        assert!(!p.contains(v3(0.0, 19.0, 9.0)), "outside the ellipse");
        assert!((p.wall_depth(v3(1.0, 0.0, 0.0)) - 0.5).abs() < 1e-12);
        assert!(p.thickened(1.0).contains(v3(2.4, 0.0, 0.0)));
    }

    /// Every inside sample of a row lies in the row's span.
    fn span_covers(shape: &impl Shape) {
        let b = shape.bbox();
        let mut inside = 0;
        for iy in 0..40 {
            for iz in 0..40 {
                let y = b.lo.y + (b.hi.y - b.lo.y) * iy as f64 / 39.0;
                let z = b.lo.z + (b.hi.z - b.lo.z) * iz as f64 / 39.0;
                let span = shape.x_span(y, z);
                for ix in 0..200 {
                    let x = b.lo.x + (b.hi.x - b.lo.x) * ix as f64 / 199.0;
                    if shape.contains(v3(x, y, z)) {
                        inside += 1;
                        let (lo, hi) = span.expect("an inside point has a span");
                        assert!(x >= lo - 1e-9 && x <= hi + 1e-9, "{x} outside {lo}..{hi}");
                    }
                }
            }
        }
        assert!(inside > 100);
    }

    #[test]
    fn spans_cover_every_inside_point() {
        span_covers(&Ellipsoid::oriented(
            v3(3.0, -2.0, 1.0),
            v3(1.0, 2.0, 0.5),
            v3(0.0, 0.0, 1.0),
            [12.0, 4.0, 6.0],
        ));
        span_covers(&Plate::new(
            v3(1.0, 2.0, 3.0),
            v3(0.3, 1.0, 0.2),
            v3(0.5, 0.0, 1.0),
            15.0,
            9.0,
            1.5,
        ));
        span_covers(&Plate::new(
            v3(0.0, 0.0, 0.0),
            v3(0.0, 1.0, 0.0),
            v3(0.0, 0.0, 1.0),
            15.0,
            9.0,
            1.5,
        ));
    }

    #[test]
    fn shell_is_a_band_without_caps() {
        let s = Shell {
            outer: Ellipsoid::aligned(v3(0.0, 0.0, 0.0), v3(14.0, 13.0, 7.0)),
            inner: Ellipsoid::aligned(v3(0.0, 0.0, 0.0), v3(11.0, 10.0, 12.0)),
        };
        assert!(s.contains(v3(12.5, 0.0, 0.0)));
        assert!(!s.contains(v3(0.0, 0.0, 0.0)));
        assert!(
            !s.contains(v3(0.0, 0.0, 6.5)),
            "the top of the midbrain is not cistern"
        );
        assert!(s.wall_depth(v3(12.5, 0.0, 0.0)) > 0.5);
    }
}
