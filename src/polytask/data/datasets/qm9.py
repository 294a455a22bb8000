"""QM9 (Ramakrishnan et al. 2014): 130,831 small organic molecules, 12 regression targets,
with a fixed-length featurisation computed from each molecule's 3-D geometry.

Input: the CSV shipped by the PyPI package ``qm9pack`` (``qm9_targets_xyz.csv.gz``: element
lists, XYZ coordinates in Angstrom, 15 property columns); ``path`` names it.

Features (58 per molecule, vectorised over padded [N, 29, ...] arrays, cached):

- ``cm_0 .. cm_28``: the eigenvalues of the Coulomb matrix (Rupp et al. 2012;
  ``C_ii = 0.5 Z_i^2.4``, ``C_ij = Z_i Z_j / |R_i - R_j|`` with distances in bohr), sorted by
  decreasing magnitude, zero-padded to QM9's 29 atoms;
- ``n_H, n_C, n_N, n_O, n_F``: atom counts per element;
- ``d_00 .. d_23``: the histogram of all interatomic distances, 24 bins of 0.25 Angstrom
  from 0.5 to 6.5 Angstrom.

Targets (the 12 of the common QM9 benchmark): ``mu`` (Debye), ``alpha`` (bohr^3),
``homo``, ``lumo``, ``gap`` (eV), ``r2`` (bohr^2), ``zpve`` (eV), ``u0``, ``u298``, ``h298``,
``g298`` (atomization energies in eV: the file's totals minus QM9's per-atom reference
energies at B3LYP/6-31G(2df,p), from the dataset's atomref table), ``cv`` (cal/mol K).

The features and targets of a file are cached under ``cache_dir`` (default
``~/.cache/polytask``) by the file's content hash, so a second load skips the featurisation.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from polytask.errors import DataError

VERSION = 1
MAX_ATOMS = 29
BOHR_PER_ANGSTROM = 1.0 / 0.52917721092
EV_PER_HARTREE = 27.211386245988
ELEMENTS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
BINS = np.linspace(0.5, 6.5, 25)
# per-atom reference energies (Hartree) for U0, U(298 K), H(298 K), G(298 K): QM9's atomref
ATOM_REFERENCE = {
    "H": (-0.500273, -0.498857, -0.497912, -0.510927),
    "C": (-37.846772, -37.845355, -37.844411, -37.861317),
    "N": (-54.583861, -54.582445, -54.581501, -54.598897),
    "O": (-75.064579, -75.063163, -75.062219, -75.079532),
    "F": (-99.718730, -99.717314, -99.716370, -99.733544),
}
TARGETS = ["mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "u0", "u298", "h298", "g298", "cv"]
SOURCE_COLUMNS = {
    "mu": "Dipole_debye",
    "alpha": "Polarizability_bohr3",
    "homo": "HOMO_au",
    "lumo": "LUMO_au",
    "gap": "HOMO_LUMO_gap_au",
    "r2": "R2_bohr2",
    "zpve": "ZPVE_au",
    "u0": "InternalEnergy_0K_au",
    "u298": "InternalEnergy_298K_au",
    "h298": "Enthalphy_298K_au",
    "g298": "GibbsFreeEnergy_298K_au",
    "cv": "Heatcapacity_Cv_cal_mol_K",
}
FEATURES = (
    [f"cm_{i}" for i in range(MAX_ATOMS)]
    + [f"n_{e}" for e in ELEMENTS]
    + [f"d_{i:02d}" for i in range(len(BINS) - 1)]
)


def parse_molecules(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Padded atomic numbers [N, 29] (0 = no atom) and coordinates [N, 29, 3] (Angstrom),
    parsed from the element and XYZ columns in one pass over the concatenated text."""
    counts = frame["N_atoms"].to_numpy(dtype=np.int64)
    if counts.max() > MAX_ATOMS:
        raise DataError(f"QM9: a molecule has {counts.max()} atoms; at most {MAX_ATOMS} expected")
    symbols = ",".join(frame["Elements"]).translate(str.maketrans("", "", "[]' "))
    numbers = pd.Series(symbols.split(",")).map(ELEMENTS)
    if numbers.isna().any():
        raise DataError(
            f"QM9: unknown element {symbols.split(',')[int(numbers.isna().to_numpy().argmax())]!r}"
        )
    text = ",".join(frame["XYZ_Ang"]).translate(str.maketrans("", "", "[] "))
    xyz = np.array(text.split(","), dtype=np.float64).reshape(-1, 3)
    if len(xyz) != counts.sum() or len(numbers) != counts.sum():
        raise DataError("QM9: atom counts do not match the element and coordinate lists")
    slot = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    row = np.repeat(np.arange(len(counts)), counts)
    z = np.zeros((len(counts), MAX_ATOMS), dtype=np.int64)
    coordinates = np.zeros((len(counts), MAX_ATOMS, 3))
    z[row, slot] = numbers.to_numpy(dtype=np.int64)
    coordinates[row, slot] = xyz
    return z, coordinates


def featurise(z: np.ndarray, coordinates: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """[N, 58] float32 features (see the module docstring), computed chunk by chunk."""
    parts = []
    for start in range(0, len(z), chunk):
        zc, rc = z[start : start + chunk].astype(np.float64), coordinates[start : start + chunk]
        present = zc > 0
        distance = np.linalg.norm(rc[:, :, None, :] - rc[:, None, :, :], axis=-1)  # Angstrom
        pair = present[:, :, None] & present[:, None, :]
        off = pair & ~np.eye(MAX_ATOMS, dtype=bool)
        with np.errstate(divide="ignore", invalid="ignore"):
            coulomb = np.where(
                off, zc[:, :, None] * zc[:, None, :] / (distance * BOHR_PER_ANGSTROM), 0.0
            )
        diagonal = 0.5 * zc**2.4
        coulomb[:, np.arange(MAX_ATOMS), np.arange(MAX_ATOMS)] = diagonal
        eigen = np.linalg.eigvalsh(coulomb)
        order = np.argsort(-np.abs(eigen), axis=1)
        eigen = np.take_along_axis(eigen, order, axis=1)
        element_counts = np.stack(
            [(z[start : start + chunk] == n).sum(axis=1) for n in ELEMENTS.values()], axis=1
        )
        upper = np.triu(off, k=1)
        bins = np.digitize(distance, BINS) - 1  # bin b covers [BINS[b], BINS[b+1])
        keep = upper & (bins >= 0) & (bins < len(BINS) - 1)
        molecule = np.broadcast_to(np.arange(len(zc))[:, None, None], keep.shape)
        flat = molecule[keep] * (len(BINS) - 1) + bins[keep]
        histogram = np.bincount(flat, minlength=len(zc) * (len(BINS) - 1)).reshape(len(zc), -1)
        parts.append(np.concatenate([eigen, element_counts, histogram], axis=1))
    return np.concatenate(parts).astype(np.float32)


def targets(frame: pd.DataFrame, z: np.ndarray) -> np.ndarray:
    """[N, 12] targets in the units of the module docstring."""
    columns = []
    references = np.zeros((len(frame), 4))
    for symbol, energy in ATOM_REFERENCE.items():
        references += (z == ELEMENTS[symbol]).sum(axis=1, keepdims=True) * np.array(energy)
    energies = {"u0": 0, "u298": 1, "h298": 2, "g298": 3}
    for name in TARGETS:
        values = frame[SOURCE_COLUMNS[name]].to_numpy(dtype=np.float64)
        if name in energies:
            values = (values - references[:, energies[name]]) * EV_PER_HARTREE
        elif name in ("homo", "lumo", "gap", "zpve"):
            values = values * EV_PER_HARTREE
        columns.append(values)
    return np.stack(columns, axis=1)


def file_hash(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def qm9_table(path: str | Path, cache_dir: str | Path | None = None) -> pd.DataFrame:
    """Every molecule: the 58 features, the 12 targets and its QM9 index; cached."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"QM9 file not found: {path} (data.dataset_options.path)")
    default = str(Path.home() / ".cache" / "polytask")
    cache = Path(cache_dir or os.environ.get("POLYTASK_CACHE", default))
    cached = cache / f"qm9-v{VERSION}-{file_hash(path)}.npz"
    if cached.is_file():
        stored = np.load(cached)
        features, values, index = stored["features"], stored["targets"], stored["index"]
    else:
        frame = pd.read_csv(path)
        z, coordinates = parse_molecules(frame)
        features, values = featurise(z, coordinates), targets(frame, z)
        index = frame["Index"].to_numpy()
        cache.mkdir(parents=True, exist_ok=True)
        temp = cached.with_name(cached.name + f".{os.getpid()}.tmp.npz")
        np.savez(temp, features=features, targets=values, index=index)
        os.replace(temp, cached)
    table = pd.DataFrame(features, columns=FEATURES)
    for k, name in enumerate(TARGETS):
        table[name] = values[:, k]
    table.insert(0, "molecule", index)
    return table


def load_qm9(
    path: str | Path,
    rows: int | None = None,
    valid: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train / valid / test frames of a seeded random split; ``rows`` subsamples the
    molecules first (the same seed, so that a subsample is the same for every model)."""
    table = qm9_table(path, cache_dir)
    order = np.random.default_rng(seed).permutation(len(table))
    if rows is not None:
        order = order[:rows]
    n_valid, n_test = round(valid * len(order)), round(test * len(order))
    parts = (order[n_valid + n_test :], order[:n_valid], order[n_valid : n_valid + n_test])
    train, valid_frame, test_frame = (table.iloc[np.sort(p)].reset_index(drop=True) for p in parts)
    return train, valid_frame, test_frame
