"""UCI Census-Income (KDD), prepared as in the MMoE paper (Ma et al., KDD 2018, section 6.3).

Protocol: train on the 199,523 rows of ``census-income.data``; split the 99,762 rows of
``census-income.test`` 1:1 (seeded) into validation and test. Education and marital status are
label sources, so both are removed from the inputs, as is the sampling weight.

Label columns produced:
- ``income``: 1 where income > 50K (MMoE group 1, task 1)
- ``never_married``: 1 where marital status is "Never married" (groups 1 and 2)
- ``college``: 1 where education is some college or more, associates degrees included
  (MMoE group 2, task 1)

The data is UCI's, licensed CC BY 4.0 (Lane & Kohavi, 2000); the shipped sample keeps that
attribution in ``files/CENSUS_INCOME_NOTICE``.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polytask.errors import DataError

UCI_BASE = "https://archive.ics.uci.edu/ml/machine-learning-databases/census-income-mld/"
TRAIN_FILE = "census-income.data.gz"
TEST_FILE = "census-income.test.gz"

RAW_COLUMNS = [
    "age",
    "class_of_worker",
    "detailed_industry_recode",
    "detailed_occupation_recode",
    "education",
    "wage_per_hour",
    "enroll_in_edu_inst_last_wk",
    "marital_stat",
    "major_industry_code",
    "major_occupation_code",
    "race",
    "hispanic_origin",
    "sex",
    "member_of_a_labor_union",
    "reason_for_unemployment",
    "full_or_part_time_employment_stat",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "tax_filer_stat",
    "region_of_previous_residence",
    "state_of_previous_residence",
    "detailed_household_and_family_stat",
    "detailed_household_summary_in_household",
    "instance_weight",
    "migration_code_change_in_msa",
    "migration_code_change_in_reg",
    "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt",
    "num_persons_worked_for_employer",
    "family_members_under_18",
    "country_of_birth_father",
    "country_of_birth_mother",
    "country_of_birth_self",
    "citizenship",
    "own_business_or_self_employed",
    "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits",
    "weeks_worked_in_year",
    "year",
    "income_label",
]
NUMERIC = [
    "age",
    "wage_per_hour",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "num_persons_worked_for_employer",
    "weeks_worked_in_year",
]
LABELS = ["income", "never_married", "college"]
GROUPS = {1: ("income", "never_married"), 2: ("college", "never_married")}
COLLEGE = {
    "Some college but no degree",
    "Associates degree-occup /vocational",
    "Associates degree-academic program",
    "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)",
    "Prof school degree (MD DDS DVM LLB JD)",
    "Doctorate degree(PhD EdD)",
}
DEFAULT_CACHE = Path.home() / ".cache" / "polytask" / "census_income_kdd"


def read_census_file(path: Path) -> pd.DataFrame:
    """One original file -> features as categories/numbers plus the three 0/1 label columns.

    Read by pyarrow's multi-threaded CSV reader: every field as text, trimmed of the space
    after each comma, ``?`` as missing; coded fields become pandas categories straight from
    Arrow dictionaries, the quantities numbers (so nothing is parsed twice)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv

    try:
        table = pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(column_names=RAW_COLUMNS),
            convert_options=pa_csv.ConvertOptions(
                column_types=dict.fromkeys(RAW_COLUMNS, pa.string()),
                null_values=[],
                strings_can_be_null=False,
            ),
        )
    except (OSError, pa.ArrowInvalid, EOFError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "columns" in first:  # a line with the wrong number of fields
            raise DataError(
                f"census file {path} does not have the {len(RAW_COLUMNS)} UCI fields ({first})"
            ) from None
        raise DataError(f"census file {path} could not be read: {first}") from None
    if table.num_rows == 0:
        raise DataError(f"census file {path} does not have the {len(RAW_COLUMNS)} UCI fields")
    labels = ("education", "marital_stat", "income_label")
    text = {name: pc.utf8_ltrim_whitespace(table[name]) for name in (*NUMERIC, *labels)}
    if pc.any(pc.equal(text["income_label"], "")).as_py():
        raise DataError(f"census file {path} does not have the {len(RAW_COLUMNS)} UCI fields")
    dropped = {*labels, "instance_weight"}
    columns: dict[str, Any] = {}
    for name in RAW_COLUMNS:
        if name in dropped:
            continue
        if name in NUMERIC:
            # "?" is UCI's missing value; an empty field is one too
            values = pc.if_else(pc.is_in(text[name], pa.array(["?", ""])), None, text[name])
            try:
                columns[name] = values.cast(pa.float64()).to_numpy(zero_copy_only=False)
            except pa.ArrowInvalid as error:
                raise DataError(f"census file {path}, field '{name}': {error}") from None
        else:
            columns[name] = _category(table[name])
    frame = pd.DataFrame(columns)
    frame["income"] = _flag(pc.starts_with(text["income_label"], "50000+"))
    frame["never_married"] = _flag(pc.equal(text["marital_stat"], "Never married"))
    frame["college"] = _flag(pc.is_in(text["education"], pa.array(sorted(COLLEGE))))
    return frame


def _category(raw: Any) -> pd.Series:
    """A coded field as a pandas category: the few distinct values trimmed, not every row
    (the space after each comma), "?" and empty fields missing."""
    values = raw.dictionary_encode().to_pandas()
    trimmed = [str(c).lstrip(" ") for c in values.cat.categories]
    if len(set(trimmed)) < len(trimmed):  # two values equal once trimmed: merged by value
        values = values.astype(object).str.lstrip(" ").astype("category")
    else:
        values = values.cat.rename_categories(trimmed)
    missing = [c for c in ("?", "") if c in values.cat.categories]
    return values.cat.remove_categories(missing) if missing else values


def _flag(values: Any) -> np.ndarray:
    """A boolean Arrow array as 0/1 int64."""
    return values.to_numpy(zero_copy_only=False).astype(np.int64)


def _keep_group(frame: pd.DataFrame, group: int | None) -> pd.DataFrame:
    """Keep only the label columns of one MMoE task group: a label column left in the frame
    would otherwise be read as an input (``college`` carries education into group 1)."""
    if group is None:
        return frame
    if group not in GROUPS:
        raise DataError(f"census data: group must be 1 or 2 (got {group!r})")
    return frame.drop(columns=[c for c in LABELS if c not in GROUPS[group]])


def _split_half(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    order = np.random.default_rng(seed).permutation(len(frame))
    half = len(frame) // 2
    valid = frame.iloc[np.sort(order[:half])].reset_index(drop=True)
    test = frame.iloc[np.sort(order[half:])].reset_index(drop=True)
    return valid, test


def _download(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in (TRAIN_FILE, TEST_FILE):
        target = folder / name
        if target.is_file():
            continue
        temp = target.with_suffix(".part")
        try:
            with urllib.request.urlopen(UCI_BASE + name, timeout=60) as response:
                temp.write_bytes(response.read())
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            temp.unlink(missing_ok=True)
            raise DataError(
                f"could not download {UCI_BASE + name} ({error}); without network, set "
                f"data.dataset_options.path to a folder holding {TRAIN_FILE} and {TEST_FILE}"
            ) from None
        temp.rename(target)


def load_census_income(
    path: str | None = None, download: bool = True, seed: int = 0, group: int | None = 1
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train / valid / test frames under the MMoE protocol.

    ``path`` is a folder with the two original gzip files; without it the files are read from
    (or downloaded into) ``~/.cache/polytask/census_income_kdd``. ``group`` (1 or 2) keeps that
    MMoE task group's label columns only; ``None`` keeps all three (then drop the ones you do
    not predict with ``data.drop``, or they become inputs).
    """
    folder = Path(path) if path is not None else DEFAULT_CACHE
    missing = [n for n in (TRAIN_FILE, TEST_FILE) if not (folder / n).is_file()]
    if missing:
        if path is not None or not download:
            raise DataError(f"census data: {', '.join(missing)} not found in {folder}")
        _download(folder)
    train = _keep_group(read_census_file(folder / TRAIN_FILE), group)
    valid, test = _split_half(_keep_group(read_census_file(folder / TEST_FILE), group), seed)
    return train, valid, test


def load_census_income_sample(
    seed: int = 0, group: int | None = 1
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The small real sample shipped with polytask (see ``files/CENSUS_INCOME_NOTICE``)."""
    files = resources.files("polytask.data.datasets") / "files"
    with resources.as_file(files / "census_income_sample.data.gz") as train_path:
        train = _keep_group(read_census_file(train_path), group)
    with resources.as_file(files / "census_income_sample.test.gz") as test_path:
        valid, test = _split_half(_keep_group(read_census_file(test_path), group), seed)
    return train, valid, test
