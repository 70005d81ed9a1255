//! Parallel loops for the kernels, on rayon's global pool.
//!
//! The kernels only need three shapes of loop: per-index jobs ([`for_each`]), per-thread
//! accumulators ([`fold`], for kernel gradients) and disjoint output chunks ([`chunks_map`]).
//! Keeping them here keeps the scheduling policy (chunk sizes, accumulator counts) in one place.
//!
//! Threads: rayon's pool (`RAYON_NUM_THREADS`, default the core count). candle 0.11 runs its own
//! element-wise ops on a second pool of spinning workers (`candle_core::utils::barrier_pool`,
//! sized by `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`), which keep spinning for a while
//! after each candle op, on the cores the kernels need. Running the kernels on that pool instead
//! was measured worse on a loaded 2-core machine (its barrier spins on descheduled workers), so
//! they stay on rayon, whose idle workers yield. A training process on few cores does best with
//! `CANDLE_NUM_THREADS=1` (candle's memory-bound ops on the calling thread, no spinning): a
//! quarter less CPU per Unet step on 2 cores (`benches/nn_ops.rs`, unet step, 480 vs 640 ms).

use rayon::prelude::*;

/// Threads that run a parallel loop.
pub(crate) fn threads() -> usize {
    rayon::current_num_threads()
}

/// Folds every `i < n` into per-thread accumulators created by `init`; returns the
/// accumulators (a few per thread, in no particular order).
pub(crate) fn fold<A: Send>(
    n: usize,
    init: impl Fn() -> A + Sync + Send,
    f: impl Fn(&mut A, usize) + Sync + Send,
) -> Vec<A> {
    if n == 0 {
        return Vec::new();
    }
    // At least n / (2·threads) indices per accumulator: few accumulators to sum, still some
    // room to balance uneven jobs.
    let min_len = (n / (2 * threads())).max(1);
    (0..n)
        .into_par_iter()
        .with_min_len(min_len)
        .fold(
            || None,
            |acc: Option<A>, i| {
                let mut a = acc.unwrap_or_else(&init);
                f(&mut a, i);
                Some(a)
            },
        )
        .filter_map(|a| a)
        .collect()
}

/// Calls `f(i)` once for every `i < n`.
pub(crate) fn for_each(n: usize, f: impl Fn(usize) + Sync + Send) {
    (0..n).into_par_iter().for_each(f);
}

/// `f(i)` for every `i < n`, collected in order.
pub(crate) fn map<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    (0..n).into_par_iter().map(f).collect()
}

/// `f(i, chunk)` for the consecutive `len`-element chunks of `data` (the last may be shorter),
/// in parallel; the results in chunk order.
pub(crate) fn chunks_map<T: Send, R: Send>(
    data: &mut [T],
    len: usize,
    f: impl Fn(usize, &mut [T]) -> R + Sync + Send,
) -> Vec<R> {
    data.par_chunks_mut(len.max(1))
        .enumerate()
        .map(|(i, c)| f(i, c))
        .collect()
}

/// [`chunks_map`] without results.
pub(crate) fn chunks_mut<T: Send>(
    data: &mut [T],
    len: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    data.par_chunks_mut(len.max(1))
        .enumerate()
        .for_each(|(i, c)| f(i, c));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_is_visited_once() {
        let n = 1003;
        let parts = fold(n, Vec::new, |acc: &mut Vec<usize>, i| acc.push(i));
        let mut all: Vec<usize> = parts.into_iter().flatten().collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>());

        let mut data = vec![0usize; 1000];
        chunks_mut(&mut data, 7, |i, c| {
            c.iter_mut().enumerate().for_each(|(j, v)| *v = i * 7 + j)
        });
        assert_eq!(data, (0..1000).collect::<Vec<_>>());
        assert_eq!(map(5, |i| i * i), vec![0, 1, 4, 9, 16]);
        let sums = chunks_map(&mut data, 500, |i, c| (i, c.len()));
        assert_eq!(sums, vec![(0, 500), (1, 500)]);
    }
}
