//! Seam blending: the weights the GPU stitch pass uses, and a CPU reference of
//! the whole stitch that the GPU output is diffed against.
//!
//! Each tile's weight at a pixel is the product of a column weight and a row
//! weight. Along an axis, a tile's weight rises with a raised cosine over the
//! blend zone of its left/top seam and falls over the zone of its right/bottom
//! seam; the falling weight of one tile is `1 - rise` of the next, so the weights
//! of all tiles sum to one everywhere. There is no seam at a frame border, hence
//! no ramp there. The GPU pass uses a shortcut form (only four candidate tiles per
//! region, see [`super::tiler::Tiler::stitch_region`]); this module evaluates the
//! full form over every tile, so the two are independent.

use super::tiler::Tiler;

/// Rising raised-cosine weight of the tile after a seam at `seam` (a core
/// boundary) with blend half-width `half`, at pixel-centre coordinate `pos`.
pub fn rise(pos: f32, seam: u32, half: u32) -> f32 {
    if half == 0 {
        return if pos >= seam as f32 { 1.0 } else { 0.0 };
    }
    let t = ((pos - (seam as f32 - half as f32)) / (2.0 * half as f32)).clamp(0.0, 1.0);
    0.5 - 0.5 * (std::f32::consts::PI * t).cos()
}

/// Weight of tile `index` along one axis with core boundaries `bounds`.
pub fn axis_weight(bounds: &[u32], index: usize, half: u32, pos: f32) -> f32 {
    let last = bounds.len() - 2;
    let rising = if index == 0 { 1.0 } else { rise(pos, bounds[index], half) };
    let falling = if index == last { 1.0 } else { 1.0 - rise(pos, bounds[index + 1], half) };
    rising * falling
}

/// Weight of tile (`col`, `row`) at pixel (`x`, `y`).
pub fn tile_weight(tiler: &Tiler, col: u32, row: u32, x: u32, y: u32) -> f32 {
    let h = tiler.blend_half();
    axis_weight(&tiler.xs, col as usize, h, x as f32 + 0.5) * axis_weight(&tiler.ys, row as usize, h, y as f32 + 0.5)
}

/// What the CPU reference found wrong with a plan's weights.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BlendError {
    #[error("blend weights sum to {sum} at ({x}, {y}), not 1")]
    SumNotOne { x: u32, y: u32, sum: f32 },
    #[error("tile ({col}, {row}) has weight {weight} at ({x}, {y}), outside the pixels it rendered exactly")]
    WeightOutsideTile { col: u32, row: u32, x: u32, y: u32, weight: f32 },
}

/// CPU reference stitch. `tiles[i]` holds the RGBA of tile `i` (row-major order
/// of [`Tiler::tiles`]) over its `rect`. Fails if the weights at any pixel do not
/// sum to one, or if a tile is weighted where its post-processed output is not
/// exact (within [`super::tiler::POST_RADIUS`] of an interior rect edge).
pub fn cpu_stitch(tiler: &Tiler, tiles: &[Vec<[f32; 4]>]) -> Result<Vec<[f32; 4]>, BlendError> {
    cpu_stitch_with(tiler, tiles, tile_weight)
}

/// [`cpu_stitch`] with another weight function, so tests can show that broken
/// weights are caught.
pub fn cpu_stitch_with(
    tiler: &Tiler,
    tiles: &[Vec<[f32; 4]>],
    weight: impl Fn(&Tiler, u32, u32, u32, u32) -> f32,
) -> Result<Vec<[f32; 4]>, BlendError> {
    let all = tiler.tiles();
    let mut out = vec![[0.0f32; 4]; (tiler.width * tiler.height) as usize];
    let exact = |t: &super::tiler::Tile| exact_rect(tiler, t);
    for y in 0..tiler.height {
        for x in 0..tiler.width {
            let mut sum = 0.0f32;
            let mut acc = [0.0f32; 4];
            for (i, tile) in all.iter().enumerate() {
                let w = weight(tiler, tile.col, tile.row, x, y);
                if w == 0.0 {
                    continue;
                }
                if !exact(tile).contains(x, y) {
                    return Err(BlendError::WeightOutsideTile { col: tile.col, row: tile.row, x, y, weight: w });
                }
                let local = ((y - tile.rect.y) * tile.rect.width + (x - tile.rect.x)) as usize;
                let px = tiles[i][local];
                for c in 0..4 {
                    acc[c] += w * px[c];
                }
                sum += w;
            }
            if (sum - 1.0).abs() > 1e-6 {
                return Err(BlendError::SumNotOne { x, y, sum });
            }
            out[(y * tiler.width + x) as usize] = acc;
        }
    }
    Ok(out)
}

/// The part of a tile's rect whose post-processed pixels are exact.
pub fn exact_rect(tiler: &Tiler, tile: &super::tiler::Tile) -> super::tiler::TileRect {
    use super::tiler::POST_RADIUS;
    let r = tile.rect;
    let shrink = |interior: bool| if interior { POST_RADIUS } else { 0 };
    let (l, t) = (shrink(tile.col > 0), shrink(tile.row > 0));
    let (rt, b) = (shrink(tile.col + 1 < tiler.cols), shrink(tile.row + 1 < tiler.rows));
    super::tiler::TileRect { x: r.x + l, y: r.y + t, width: r.width - l - rt, height: r.height - t - b }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_is_a_raised_cosine() {
        assert_eq!(rise(0.0, 64, 8), 0.0);
        assert_eq!(rise(100.0, 64, 8), 1.0);
        assert!((rise(64.0, 64, 8) - 0.5).abs() < 1e-6);
        assert_eq!(rise(63.5, 64, 0), 0.0);
        assert_eq!(rise(64.5, 64, 0), 1.0);
    }

    #[test]
    fn constant_tiles_stitch_to_the_constant() {
        let tiler = Tiler::new(200, 120, 3, 2, 24).unwrap();
        let tiles: Vec<Vec<[f32; 4]>> =
            tiler.tiles().iter().map(|t| vec![[0.25, 0.5, 0.75, 1.0]; t.rect.area() as usize]).collect();
        let out = cpu_stitch(&tiler, &tiles).unwrap();
        for px in out {
            for (c, want) in px.iter().zip([0.25, 0.5, 0.75, 1.0]) {
                assert!((c - want).abs() < 1e-6);
            }
        }
    }
}
