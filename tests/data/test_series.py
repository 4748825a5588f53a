"""series_csv, sine, linear_synthetic, the scaling helpers and k-step forecasting."""
from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch

from models.artifact.scaling import fit_scaling, k_step_forecast, scale, unscale
from models.data import DataError, load_dataset

from .formats import shared

CSV = '"Month","Passengers"\n' + "\n".join(f'"1949-{m:02d}",{100 + m}' for m in range(1, 21))


def write_csv(tmp_path, text=CSV, name="s.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_csv_windows_and_split(tmp_path):
    s = load_dataset("series_csv", {"path": write_csv(tmp_path), "window": 3, "test_fraction": 0.25, "scaling": "none"})
    assert s.series.tolist() == [float(100 + m) for m in range(1, 21)]
    assert s.split == 15 and s.window == 3
    assert s.train_x.shape == (12, 3) and s.train_y.shape == (12, 1) and s.test_x.shape == (5, 3)
    assert s.train_x.dtype == torch.float32
    assert s.train_x[0].tolist() == [101.0, 102.0, 103.0] and s.train_y[0].item() == 104.0
    assert s.test_y[0].item() == s.series[s.split].item()  # first test target sits at `split`
    assert torch.equal(s.train_x[1:, :-1], s.train_x[:-1, 1:])  # sliding by one


@pytest.mark.parametrize("kind", ["standard", "minmax"])
def test_scaling_fitted_on_train_only(tmp_path, kind):
    s = load_dataset("series_csv", {"path": write_csv(tmp_path), "test_fraction": 0.25, "scaling": kind})
    train_values = s.series[: s.split].numpy()
    if kind == "standard":
        assert s.scaling["mean"] == pytest.approx(train_values.mean())
    else:
        assert s.scaling["max"] == pytest.approx(train_values.max())
    raw = unscale(s.train_y[:, 0].numpy(), s.scaling)
    assert np.allclose(raw, s.series[s.window : s.split].numpy(), atol=1e-4)


def test_scale_unscale_round_trip_without_torch():
    scaling = fit_scaling(np.array([1.0, 2.0, 3.0, 4.0]), "standard")
    assert scale([1.0, 4.0], scaling).tolist() == pytest.approx([-1.3416407, 1.3416407])
    assert unscale(scale(2.5, scaling), scaling) == pytest.approx(2.5)
    assert fit_scaling(np.array([5.0, 5.0]), "standard")["std"] == 1.0  # constant series: no division by 0
    assert scale(3.0, {"kind": "minmax", "min": 1.0, "max": 5.0}) == pytest.approx(0.5)


def test_column_by_name_and_index(tmp_path):
    path = write_csv(tmp_path, '"Date","A","B"\n"2000-01-01",1,10\n"2000-01-02",2,20\n' + "\n".join(
        f'"2000-01-{d:02d}",{d},{d * 10}' for d in range(3, 15)))
    by_name = load_dataset("series_csv", {"path": path, "column": "A", "window": 2})
    by_index = load_dataset("series_csv", {"path": path, "column": 1, "window": 2})
    default = load_dataset("series_csv", {"path": path, "window": 2})
    assert torch.equal(by_name.series, by_index.series)
    assert default.series[0].item() == 10.0  # the last column


def test_non_numeric_cell_names_file_and_line(tmp_path):
    path = write_csv(tmp_path, '"Month","Passengers"\n"1949-01",112\n"1949-02",n/a\n"1949-03",5\n')
    with pytest.raises(DataError, match=r"s\.csv:3: column 'Passengers' value 'n/a' is not a number"):
        load_dataset("series_csv", {"path": path})


def test_short_row_and_unknown_column(tmp_path):
    path = write_csv(tmp_path, '"Month","Passengers"\n"1949-01",112\n"1949-02"\n')
    with pytest.raises(DataError, match=r"s\.csv:3: 1 cells"):
        load_dataset("series_csv", {"path": path})
    with pytest.raises(DataError, match=r"s\.csv: no column 'Temp'; columns: Month, Passengers"):
        load_dataset("series_csv", {"path": path, "column": "Temp"})


def test_too_short_for_window(tmp_path):
    path = write_csv(tmp_path, '"t","v"\n' + "\n".join(f"{i},{i}" for i in range(6)))
    with pytest.raises(DataError, match=r"s\.csv: 6 values is too short for window 5"):
        load_dataset("series_csv", {"path": path, "window": 5})


def test_empty_and_header_only(tmp_path):
    with pytest.raises(DataError, match=r"e\.csv: empty CSV file"):
        load_dataset("series_csv", {"path": write_csv(tmp_path, "", "e.csv")})
    with pytest.raises(DataError, match=r"h\.csv: no data rows"):
        load_dataset("series_csv", {"path": write_csv(tmp_path, '"a","b"\n', "h.csv")})


def test_sine_like_the_course():
    s = load_dataset("sine", {}, seed=0)
    assert s.series.shape == (1000,) and s.train_x.shape == (600, 4) and s.test_x.shape == (396, 4)
    assert s.split == 604 and s.scaling == {"kind": "none"}
    clean = np.sin(0.01 * np.arange(1, 1001))
    assert 0.15 < np.std(s.series.numpy() - clean) < 0.25
    with pytest.raises(pydantic.ValidationError, match="must be < length"):
        load_dataset("sine", {"length": 100})


def test_k_step_forecast_feeds_predictions_back():
    calls = []

    def predict(x):  # next = last + 1, so k steps from [.., 4] give 5, 6, 7
        calls.append(x.shape)
        return x[:, -1:] + 1

    assert k_step_forecast(predict, [0.0, 1, 2, 3, 4], k=3, window=2).tolist() == [5.0, 6.0, 7.0]
    batch = k_step_forecast(predict, np.array([[0.0, 1, 2], [10, 11, 12]]), k=2, window=3)
    assert batch.tolist() == [[3.0, 4.0], [13.0, 14.0]]
    assert calls[-1] == (2, 3)
    with pytest.raises(ValueError, match="window"):
        k_step_forecast(predict, [1.0], k=1, window=2)


def test_k_step_with_a_linear_model_on_sine():
    s = load_dataset("sine", {})
    sol = torch.linalg.lstsq(torch.cat([s.train_x, torch.ones(600, 1)], 1), s.train_y).solution  # (5, 1)
    predict = lambda x: np.concatenate([x, np.ones((len(x), 1), np.float32)], 1) @ sol.numpy()  # noqa: E731
    one_step = predict(s.test_x.numpy())
    assert np.mean((one_step - s.test_y.numpy()) ** 2) < 0.1
    ahead = k_step_forecast(predict, s.series[: s.split].numpy(), k=4, window=s.window)
    assert ahead.shape == (4,) and np.all(np.abs(ahead) < 2)


def test_linear_synthetic():
    r = load_dataset("linear_synthetic", {}, seed=0)
    assert r.train_x.shape == (1000, 2) and r.train_y.shape == (1000, 1) and r.test_x.shape == (100, 2)
    x1 = torch.cat([r.train_x, torch.ones(1000, 1)], 1)
    w = torch.linalg.lstsq(x1, r.train_y).solution[:, 0]
    assert torch.allclose(w, torch.tensor([2.0, -3.4, 4.2]), atol=0.01)


@pytest.mark.parametrize("name,rows", [("airline-passengers.csv", 144), ("monthly-sunspots.csv", 2820),
                                       ("daily-min-temperatures.csv", 3650)])
def test_real_series(name, rows):
    s = load_dataset("series_csv", {"path": str(shared("timeseries") / name), "window": 12})
    assert s.series.shape == (rows,)
    assert s.train_x.shape[1] == 12 and len(s.train_x) + len(s.test_x) == rows - 12
    assert abs(s.train_y.mean().item()) < 0.5  # standardised on train
