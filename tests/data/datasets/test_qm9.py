"""QM9 loader: parsing, the featurisation against a per-molecule computation, the targets'
units, and the cache. A three-molecule file in qm9pack's format is written by the test."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from polytask.data.datasets.qm9 import (
    ATOM_REFERENCE,
    BINS,
    EV_PER_HARTREE,
    FEATURES,
    TARGETS,
    load_qm9,
    qm9_table,
)
from polytask.errors import DataError

MOLECULES = [
    (
        ["C", "H", "H", "H", "H"],
        [
            [-0.0127, 1.0858, 0.0080],
            [0.0022, -0.0060, 0.0020],
            [1.0117, 1.4638, 0.0003],
            [-0.5408, 1.4475, -0.8766],
            [-0.5238, 1.4379, 0.9064],
        ],
    ),
    (
        ["N", "H", "H", "H"],
        [
            [-0.0404, 1.0241, 0.0626],
            [0.0173, 0.0125, -0.0274],
            [0.9158, 1.3587, -0.0288],
            [-0.5203, 1.3435, -0.7755],
        ],
    ),
    (
        ["O", "H", "H"],
        [[-0.0343, 0.9775, 0.0076], [0.0647, 0.0206, 0.0015], [0.8717, 1.3010, 0.0007]],
    ),
]
Z = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}


def _write(path):
    rows = []
    for k, (elements, xyz) in enumerate(MOLECULES):
        rows.append(
            {
                "Index": k + 1,
                "SMILES": "x",
                "InChi": "x",
                "N_atoms": len(elements),
                "Elements": str(elements).replace(" ", ""),
                "XYZ_Ang": str(xyz).replace(" ", ""),
                "RotA_GHz": 1.0,
                "RotB_GHz": 1.0,
                "RotC_GHz": 1.0,
                "Dipole_debye": 0.1 * k,
                "Polarizability_bohr3": 10.0 + k,
                "HOMO_au": -0.3,
                "LUMO_au": 0.1,
                "HOMO_LUMO_gap_au": 0.4,
                "R2_bohr2": 30.0,
                "ZPVE_au": 0.04,
                "InternalEnergy_0K_au": -40.5 - 16 * k,
                "InternalEnergy_298K_au": -40.4 - 16 * k,
                "Enthalphy_298K_au": -40.3 - 16 * k,
                "GibbsFreeEnergy_298K_au": -40.6 - 16 * k,
                "Heatcapacity_Cv_cal_mol_K": 6.0 + k,
            }
        )
    pd.DataFrame(rows).to_csv(path, index=False, compression="gzip")
    return path


def _expected_features(elements, xyz):
    z = np.array([Z[e] for e in elements], dtype=float)
    r = np.array(xyz)
    n = len(z)
    coulomb = np.zeros((n, n))
    distances = []
    for i, j in itertools.product(range(n), range(n)):
        if i == j:
            coulomb[i, i] = 0.5 * z[i] ** 2.4
        else:
            d = np.linalg.norm(r[i] - r[j])
            coulomb[i, j] = z[i] * z[j] / (d / 0.52917721092)
            if i < j:
                distances.append(d)
    eigen = np.linalg.eigvalsh(coulomb)
    eigen = eigen[np.argsort(-np.abs(eigen))]
    padded = np.concatenate([eigen, np.zeros(29 - n)])
    counts = [sum(e == s for e in elements) for s in "HCNOF"]
    histogram, _ = np.histogram(distances, bins=BINS)
    return np.concatenate([padded, counts, histogram])


def test_features_match_a_per_molecule_computation(tmp_path):
    table = qm9_table(_write(tmp_path / "qm9.csv.gz"), cache_dir=tmp_path / "cache")
    assert list(table.columns) == ["molecule", *FEATURES, *TARGETS]
    for k, (elements, xyz) in enumerate(MOLECULES):
        np.testing.assert_allclose(
            table.loc[k, FEATURES].to_numpy(dtype=float),
            _expected_features(elements, xyz),
            rtol=1e-5,
            atol=1e-4,
        )


def test_targets_units_and_atomization(tmp_path):
    table = qm9_table(_write(tmp_path / "qm9.csv.gz"), cache_dir=tmp_path / "cache")
    reference = ATOM_REFERENCE["C"][0] + 4 * ATOM_REFERENCE["H"][0]
    assert table.loc[0, "u0"] == pytest.approx((-40.5 - reference) * EV_PER_HARTREE)
    assert table.loc[0, "gap"] == pytest.approx(0.4 * EV_PER_HARTREE)
    assert table.loc[2, "alpha"] == 12.0 and table.loc[1, "mu"] == pytest.approx(0.1)


def test_cache_is_reused(tmp_path):
    path = _write(tmp_path / "qm9.csv.gz")
    first = qm9_table(path, cache_dir=tmp_path / "cache")
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".npz"
    second = qm9_table(path, cache_dir=tmp_path / "cache")
    pd.testing.assert_frame_equal(first, second)


def test_split_and_subsample(tmp_path):
    path = _write(tmp_path / "qm9.csv.gz")
    train, valid, test = load_qm9(path, valid=1 / 3, test=1 / 3, cache_dir=tmp_path / "c")
    assert len(train) == len(valid) == len(test) == 1
    assert sorted([*train.molecule, *valid.molecule, *test.molecule]) == [1, 2, 3]
    train, valid, test = load_qm9(path, rows=2, valid=0.5, test=0.0, cache_dir=tmp_path / "c")
    assert len(train) + len(valid) + len(test) == 2


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="QM9 file not found"):
        qm9_table(tmp_path / "nope.csv.gz")
