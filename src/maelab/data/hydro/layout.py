"""The HadUK-Grid 5 km British grid: land mask, valid land patches, grid coordinates.

Grid: 290 rows (y, south → north) × 180 columns (x, west → east), EPSG:27700 cell centres
x = −197,500 … 697,500 m, y = −197,500 … 1,247,500 m every 5,000 m. Row 0 is the southern edge.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from maelab.core.errors import ConfigError, DataError
from maelab.nn.patchify import patchify_2d, unpatchify_2d

GRID_SHAPE = (290, 180)  # (y, x)
CELL_M = 5000.0
X_CENTRES = -197_500.0 + CELL_M * np.arange(GRID_SHAPE[1])  # (180,) metres, west → east
Y_CENTRES = -197_500.0 + CELL_M * np.arange(GRID_SHAPE[0])  # (290,) metres, south → north
SHIPPED_MASK = "uk_land_mask_frac50_290x180.npy"


def common_divisors(shape: tuple[int, int] = GRID_SHAPE) -> list[int]:
    """Patch sizes that tile the grid exactly (1, 2, 5, 10 for 290 × 180)."""
    g = math.gcd(*shape)
    return [d for d in range(1, g + 1) if g % d == 0]


def check_patch_size(patch_size: int, shape: tuple[int, int] = GRID_SHAPE,
                     key: str = "data.patch_size") -> int:
    """Return `patch_size` if it divides both grid sides, else raise naming the valid sizes."""
    valid = common_divisors(shape)
    if isinstance(patch_size, bool) or int(patch_size) != patch_size or patch_size not in valid:
        raise ConfigError(
            key, patch_size,
            f"a patch size dividing both {shape[0]} and {shape[1]}: one of "
            + ", ".join(map(str, valid)),
        )
    return int(patch_size)


def default_land_mask() -> np.ndarray:
    """The shipped UK land mask (cells ≥ 50 % land), bool (290, 180), row 0 south."""
    with resources.as_file(resources.files("maelab") / "assets" / SHIPPED_MASK) as path:
        return np.load(path).astype(bool)


def _as_bool_mask(arr: np.ndarray, source: str, key: str) -> np.ndarray:
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise ConfigError(key, source, f"a boolean (y, x) array; got dtype {arr.dtype}")
    finite = np.isfinite(arr)
    if not np.isin(arr[finite], (0, 1)).all():
        raise ConfigError(key, source, "a boolean (y, x) array (or 0/1 values; NaN = not land)")
    return finite & (np.where(finite, arr, 0) == 1)


def load_land_mask(
    source: str | Path | None = None,
    var: str = "land_mask",
    shape: tuple[int, int] = GRID_SHAPE,
    key: str = "data.land_mask",
) -> np.ndarray:
    """Bool (y, x) land mask, row 0 south: shipped default, a `.npy` file, or a NetCDF variable.

    NetCDF masks are flipped to south → north when their y coordinate descends.
    """
    if source is None:
        mask = default_land_mask()
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(key, str(source), "null (shipped UK mask) or an existing "
                              "(y, x) boolean .npy file or NetCDF (.nc) file")
        if path.suffix == ".npy":
            mask = _as_bool_mask(np.load(path), str(path), key)
        elif path.suffix in (".nc", ".nc4", ".netcdf"):
            import xarray as xr

            with xr.open_dataset(path) as ds:
                if var not in ds.variables:
                    raise ConfigError(
                        "data.land_mask_var", var,
                        f"a variable of {path}: " + ", ".join(sorted(map(str, ds.variables))),
                    )
                da = ds[var]
                if da.ndim != 2:
                    raise ConfigError(key, str(path), f"a 2-D (y, x) variable; `{var}` has "
                                      f"dims {da.dims}")
                y = da[da.dims[0]].values if da.dims[0] in da.coords else None
                mask = _as_bool_mask(np.asarray(da.values), str(path), key)
                if y is not None and y.size > 1 and y[0] > y[-1]:
                    mask = mask[::-1]
        else:
            raise ConfigError(key, str(source), "a .npy or .nc file (or null)")
    if mask.shape != tuple(shape):
        raise ConfigError(key, str(source) if source else SHIPPED_MASK,
                          f"a boolean (y, x) array of shape {tuple(shape)}; got {mask.shape}")
    return np.ascontiguousarray(mask)


@dataclass(frozen=True)
class PatchLayout:
    """Which `patch_size`² patches of the grid are land (share of land cells ≥ threshold).

    Patch index on the full grid = patch_row * n_cols + patch_col (as `patchify_2d`).
    """

    land_mask: np.ndarray  # (H, W) bool
    patch_size: int
    land_threshold: float
    land_fraction: np.ndarray  # (n_patches,) share of land cells per patch
    valid_idx: np.ndarray  # (P,) int64 indices of the valid patches on the full patch grid
    pixel_land: np.ndarray  # (P, p*p) bool land cells of each valid patch

    @classmethod
    def build(cls, land_mask: np.ndarray, patch_size: int, land_threshold: float) -> PatchLayout:
        """Validate the settings and compute the valid patches of `land_mask`."""
        check_patch_size(patch_size, land_mask.shape)
        if not 0.0 < float(land_threshold) <= 1.0:
            raise ConfigError("data.land_threshold", land_threshold, "a share in (0, 1]")
        cells = patchify_2d(land_mask, patch_size)  # (N, p*p)
        frac = cells.mean(axis=1)
        valid = np.flatnonzero(frac >= float(land_threshold) - 1e-9).astype(np.int64)
        if valid.size < 2:
            raise ConfigError("data.land_threshold", land_threshold,
                              f"a threshold leaving at least 2 land patches (got {valid.size})")
        return cls(land_mask, int(patch_size), float(land_threshold), frac, valid,
                   np.ascontiguousarray(cells[valid]))

    @property
    def grid_shape(self) -> tuple[int, int]:
        return tuple(self.land_mask.shape)

    @property
    def n_rows(self) -> int:
        return self.land_mask.shape[0] // self.patch_size

    @property
    def n_cols(self) -> int:
        return self.land_mask.shape[1] // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.n_rows * self.n_cols

    @property
    def n_valid(self) -> int:
        return int(self.valid_idx.size)

    @property
    def rows(self) -> np.ndarray:
        """(P,) patch row of each valid patch (0 = southernmost)."""
        return self.valid_idx // self.n_cols

    @property
    def cols(self) -> np.ndarray:
        """(P,) patch column of each valid patch (0 = westernmost)."""
        return self.valid_idx % self.n_cols

    def fingerprint(self) -> str:
        """Hash of the mask and settings (part of the prepared-store cache key)."""
        h = hashlib.sha256(np.packbits(self.land_mask).tobytes())
        h.update(f"{self.land_mask.shape}|{self.patch_size}|{self.land_threshold}".encode())
        return h.hexdigest()[:16]

    def extract(self, grid: np.ndarray, land_only: bool = True) -> np.ndarray:
        """(..., H, W) → (..., P, p*p) valid patches; non-land cells NaN when `land_only`."""
        if grid.shape[-2:] != self.grid_shape:
            raise DataError(f"grid of shape {grid.shape[-2:]} given; expected {self.grid_shape}")
        patches = patchify_2d(grid, self.patch_size)  # (..., N, p*p)
        out = patches[..., self.valid_idx, :]  # (..., P, p*p)
        if land_only:
            out = np.where(self.pixel_land, out, np.nan).astype(out.dtype, copy=False)
        return out

    def scatter(self, patches: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """(..., P, p*p) valid patches → (..., H, W) grid, `fill` outside the valid patches."""
        lead = patches.shape[:-2]
        full = np.full((*lead, self.n_patches, self.patch_size ** 2), fill, dtype=patches.dtype)
        full[..., self.valid_idx, :] = patches
        h, w = self.grid_shape
        return unpatchify_2d(full, self.patch_size, h, w)


def bng_to_lat_lon(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """British National Grid eastings/northings (m) → OSGB36 latitude/longitude (degrees).

    Ordnance Survey inverse transverse Mercator (Airy 1830); no datum shift (≈ 100 m off WGS84).
    """
    a, b, f0 = 6377563.396, 6356256.909, 0.9996012717
    lat0, lon0, n0, e0 = math.radians(49.0), math.radians(-2.0), -100_000.0, 400_000.0
    e2 = 1 - b * b / (a * a)
    n = (a - b) / (a + b)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def meridional(lat: np.ndarray) -> np.ndarray:
        d, s = lat - lat0, lat + lat0
        return b * f0 * (
            (1 + n + 1.25 * n**2 + 1.25 * n**3) * d
            - (3 * n + 3 * n**2 + 21 / 8 * n**3) * np.sin(d) * np.cos(s)
            + (15 / 8 * n**2 + 15 / 8 * n**3) * np.sin(2 * d) * np.cos(2 * s)
            - 35 / 24 * n**3 * np.sin(3 * d) * np.cos(3 * s)
        )

    lat = (y - n0) / (a * f0) + lat0
    for _ in range(20):  # converges in a handful of steps
        lat = lat + (y - n0 - meridional(lat)) / (a * f0)
    sin, tan, sec = np.sin(lat), np.tan(lat), 1 / np.cos(lat)
    nu = a * f0 / np.sqrt(1 - e2 * sin**2)
    rho = a * f0 * (1 - e2) / (1 - e2 * sin**2) ** 1.5
    eta2 = nu / rho - 1
    de = x - e0
    vii = tan / (2 * rho * nu)
    viii = tan / (24 * rho * nu**3) * (5 + 3 * tan**2 + eta2 - 9 * tan**2 * eta2)
    ix = tan / (720 * rho * nu**5) * (61 + 90 * tan**2 + 45 * tan**4)
    xx = sec / nu
    xi = sec / (6 * nu**3) * (nu / rho + 2 * tan**2)
    xii = sec / (120 * nu**5) * (5 + 28 * tan**2 + 24 * tan**4)
    xiia = sec / (5040 * nu**7) * (61 + 662 * tan**2 + 1320 * tan**4 + 720 * tan**6)
    lat_out = lat - vii * de**2 + viii * de**4 - ix * de**6
    lon_out = lon0 + xx * de - xi * de**3 + xii * de**5 - xiia * de**7
    return np.degrees(lat_out), np.degrees(lon_out)


def lat_lon_to_patch(lat: np.ndarray, lon: np.ndarray, patch_size: int) -> np.ndarray:
    """Latitude/longitude (degrees, OSGB36) → (…, 2) float (row, col) on the patch grid.

    Position of the nearest 5 km cell centre, in patch units (patch k's centre is at k; row 0
    south, col 0 west). NaN in, NaN out; points off the grid snap to its nearest cell.
    """
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    cell_lat, cell_lon = bng_to_lat_lon(*np.meshgrid(X_CENTRES, Y_CENTRES))  # (H, W)
    cell_lat, cell_lon = cell_lat.ravel(), cell_lon.ravel()  # (H*W,)
    out = np.full((*lat.shape, 2), np.nan)
    ok = np.isfinite(lat) & np.isfinite(lon)
    nearest = [int(np.argmin((cell_lat - la) ** 2 + ((cell_lon - lo) * math.cos(math.radians(la))) ** 2))
               for la, lo in zip(lat[ok], lon[ok], strict=True)]  # one cell per point, (H*W,) each
    iy, ix = np.divmod(np.asarray(nearest, dtype=np.int64), GRID_SHAPE[1])
    out[ok] = np.stack([(iy - (patch_size - 1) / 2) / patch_size,
                        (ix - (patch_size - 1) / 2) / patch_size], axis=-1)
    return out
