//! Tiling: a frame split into `cols x rows` tiles that overlap by a halo.
//!
//! Naming follows rav1e: a [`TileRect`] is a rectangle in frame pixels, a [`Tile`]
//! is one unit of work (its `core`, the part of the frame it is responsible for,
//! and its `rect`, the core grown by `overlap` on interior edges, which is what it
//! renders), and the [`Tiler`] makes the plan.
//!
//! Why the halo: the post-process reads a neighbourhood of radius
//! [`POST_RADIUS`], so a tile's output is exact only `POST_RADIUS` pixels inside
//! its rendered rect. Seams are blended over `2 * blend_half` pixels centred on
//! each core boundary, where `blend_half = overlap - POST_RADIUS`: both tiles are
//! exact there. Frame borders get no halo and no ramp.

use serde::Serialize;

/// Radius in pixels of the neighbourhood post-process (bloom).
pub const POST_RADIUS: u32 = 8;
/// Core boundaries are placed on multiples of this where the frame allows.
pub const TILE_ALIGN: u32 = 16;
/// Most tiles along one axis.
pub const MAX_TILES_PER_AXIS: u32 = 16;

/// A rectangle in frame pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TileRect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl TileRect {
    pub fn right(&self) -> u32 {
        self.x + self.width
    }
    pub fn bottom(&self) -> u32 {
        self.y + self.height
    }
    pub fn area(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
    pub fn contains(&self, x: u32, y: u32) -> bool {
        x >= self.x && x < self.right() && y >= self.y && y < self.bottom()
    }
}

/// One tile of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tile {
    pub col: u32,
    pub row: u32,
    /// The part of the frame this tile is responsible for; cores partition the frame.
    pub core: TileRect,
    /// What the tile renders: the core plus the halo on interior edges.
    pub rect: TileRect,
}

/// Why a tile plan does not fit a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TileError {
    #[error("tiles must be at least 1x1 and at most {max}x{max}, got {cols}x{rows}", max = MAX_TILES_PER_AXIS)]
    BadCount { cols: u32, rows: u32 },
    #[error("{count} tile {axis} do not fit a frame {size} px {dim}: each tile needs at least {need} px (16 px, and twice the {overlap} px overlap); use fewer tiles or a smaller overlap", dim = if *axis == "columns" { "wide" } else { "high" })]
    TooManyTiles { axis: &'static str, count: u32, size: u32, need: u32, overlap: u32 },
    #[error("overlap_px {overlap} is below the post-process radius {min} px, so seams would show; use at least {min} px when the frame is split into tiles", min = POST_RADIUS)]
    OverlapTooSmall { overlap: u32 },
}

/// A tile plan for one frame size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tiler {
    pub width: u32,
    pub height: u32,
    pub cols: u32,
    pub rows: u32,
    pub overlap: u32,
    /// Core boundaries along x: `cols + 1` values from 0 to `width`.
    pub xs: Vec<u32>,
    /// Core boundaries along y: `rows + 1` values from 0 to `height`.
    pub ys: Vec<u32>,
}

impl Tiler {
    /// Plans `cols x rows` tiles for a `width x height` frame. With one tile the
    /// overlap is irrelevant and ignored.
    pub fn new(width: u32, height: u32, cols: u32, rows: u32, overlap: u32) -> Result<Self, TileError> {
        if cols == 0 || rows == 0 || cols > MAX_TILES_PER_AXIS || rows > MAX_TILES_PER_AXIS {
            return Err(TileError::BadCount { cols, rows });
        }
        let overlap = if cols * rows == 1 { 0 } else { overlap };
        if cols * rows > 1 && overlap < POST_RADIUS {
            return Err(TileError::OverlapTooSmall { overlap });
        }
        let xs = boundaries("columns", width, cols, overlap)?;
        let ys = boundaries("rows", height, rows, overlap)?;
        Ok(Self { width, height, cols, rows, overlap, xs, ys })
    }

    /// Half the width of each seam's blend zone.
    pub fn blend_half(&self) -> u32 {
        self.overlap.saturating_sub(POST_RADIUS)
    }

    pub fn len(&self) -> usize {
        (self.cols * self.rows) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tile at `col`, `row`.
    pub fn tile(&self, col: u32, row: u32) -> Tile {
        let core = TileRect {
            x: self.xs[col as usize],
            y: self.ys[row as usize],
            width: self.xs[col as usize + 1] - self.xs[col as usize],
            height: self.ys[row as usize + 1] - self.ys[row as usize],
        };
        let left = if col > 0 { self.overlap } else { 0 };
        let top = if row > 0 { self.overlap } else { 0 };
        let right = if col + 1 < self.cols { self.overlap } else { 0 };
        let bottom = if row + 1 < self.rows { self.overlap } else { 0 };
        let rect = TileRect {
            x: core.x - left,
            y: core.y - top,
            width: core.width + left + right,
            height: core.height + top + bottom,
        };
        Tile { col, row, core, rect }
    }

    /// All tiles, row-major.
    pub fn tiles(&self) -> Vec<Tile> {
        (0..self.rows).flat_map(|r| (0..self.cols).map(move |c| self.tile(c, r))).collect()
    }

    /// Index of a tile in [`Tiler::tiles`].
    pub fn index(&self, col: u32, row: u32) -> usize {
        (row * self.cols + col) as usize
    }

    /// The region whose output the stitch dispatch of tile (`col`, `row`) writes:
    /// from where the seam with its left/top neighbour ends to where the seam with
    /// its right/bottom neighbour ends. Only this tile and its right, lower and
    /// lower-right neighbours contribute there.
    pub fn stitch_region(&self, col: u32, row: u32) -> TileRect {
        let h = self.blend_half();
        let x0 = if col == 0 { 0 } else { self.xs[col as usize] + h };
        let x1 = if col + 1 == self.cols { self.width } else { self.xs[col as usize + 1] + h };
        let y0 = if row == 0 { 0 } else { self.ys[row as usize] + h };
        let y1 = if row + 1 == self.rows { self.height } else { self.ys[row as usize + 1] + h };
        TileRect { x: x0, y: y0, width: x1 - x0, height: y1 - y0 }
    }
}

/// Core boundaries along one axis, on multiples of [`TILE_ALIGN`] where possible.
fn boundaries(axis: &'static str, size: u32, count: u32, overlap: u32) -> Result<Vec<u32>, TileError> {
    let need = TILE_ALIGN.max(2 * overlap);
    if u64::from(size) < u64::from(count) * u64::from(need) {
        return Err(TileError::TooManyTiles { axis, count, size, need, overlap });
    }
    let mut bounds = Vec::with_capacity(count as usize + 1);
    bounds.push(0);
    for i in 1..count {
        let ideal = (u64::from(size) * u64::from(i) / u64::from(count)) as u32;
        let aligned = (ideal + TILE_ALIGN / 2) / TILE_ALIGN * TILE_ALIGN;
        let prev = *bounds.last().unwrap_or(&0);
        let remaining_after = (count - i) * need;
        // Keep the aligned boundary only if both neighbours still get `need` pixels.
        let pick = if aligned >= prev + need && aligned + remaining_after <= size { aligned } else { ideal };
        bounds.push(pick);
    }
    bounds.push(size);
    Ok(bounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_partition_the_frame_and_align() {
        for (w, h, c, r) in [(1920, 1080, 2, 2), (1000, 562, 3, 3), (1000, 562, 4, 3), (3840, 2160, 3, 3)] {
            let t = Tiler::new(w, h, c, r, 32).unwrap();
            let mut covered = vec![0u8; (w * h) as usize];
            for tile in t.tiles() {
                for y in tile.core.y..tile.core.bottom() {
                    for x in tile.core.x..tile.core.right() {
                        covered[(y * w + x) as usize] += 1;
                    }
                }
                assert!(tile.rect.right() <= w && tile.rect.bottom() <= h);
            }
            assert!(covered.iter().all(|&n| n == 1), "{w}x{h} {c}x{r}");
            for &b in &t.xs[1..t.xs.len() - 1] {
                assert_eq!(b % TILE_ALIGN, 0, "{w}x{h} {c}x{r}: x boundary {b}");
            }
        }
    }

    #[test]
    fn halo_only_on_interior_edges() {
        let t = Tiler::new(640, 360, 2, 2, 32).unwrap();
        let tl = t.tile(0, 0);
        assert_eq!((tl.rect.x, tl.rect.y), (0, 0));
        assert_eq!(tl.rect.width, tl.core.width + 32);
        let br = t.tile(1, 1);
        assert_eq!(br.rect.right(), 640);
        assert_eq!(br.rect.x, br.core.x - 32);
    }

    #[test]
    fn stitch_regions_partition_the_frame() {
        let t = Tiler::new(1000, 562, 4, 3, 24).unwrap();
        let mut covered = vec![0u8; 1000 * 562];
        for tile in t.tiles() {
            let r = t.stitch_region(tile.col, tile.row);
            for y in r.y..r.bottom() {
                for x in r.x..r.right() {
                    covered[(y * 1000 + x) as usize] += 1;
                }
            }
        }
        assert!(covered.iter().all(|&n| n == 1));
    }

    #[test]
    fn rejects_plans_that_do_not_fit() {
        assert!(matches!(Tiler::new(64, 64, 5, 1, 8), Err(TileError::TooManyTiles { .. })));
        assert!(matches!(Tiler::new(640, 360, 2, 2, 4), Err(TileError::OverlapTooSmall { .. })));
        assert!(matches!(Tiler::new(640, 360, 0, 2, 32), Err(TileError::BadCount { .. })));
        assert_eq!(Tiler::new(640, 360, 1, 1, 4).unwrap().overlap, 0);
    }
}
