import numpy as np
import pytest
import SimpleITK as sitk

from hieseg.errors import InputError
from hieseg.inputs.cases import case_id_of, find_cases, pair_case
from hieseg.inputs.io import Geometry, read_image, write_mask
from hieseg.inputs.phantom import make_phantom
from hieseg.inputs.shards import shard


def test_mask_keeps_exact_geometry_in_every_format(tmp_path):
    phantom = make_phantom()
    for name in ("m.mha", "m.nii.gz", "m.nii"):
        write_mask(phantom.label, phantom.geometry, tmp_path / name)
        image = sitk.ReadImage(str(tmp_path / name))
        assert image.GetPixelID() == sitk.sitkUInt8
        array, geometry = read_image(tmp_path / name)
        np.testing.assert_array_equal(array, phantom.label)
        assert geometry.size == phantom.geometry.size
        np.testing.assert_allclose(geometry.spacing, phantom.geometry.spacing, rtol=1e-6)
        np.testing.assert_allclose(geometry.origin, phantom.geometry.origin, atol=1e-4)
        np.testing.assert_allclose(geometry.direction, phantom.geometry.direction, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mha", "m.nii", "m.nii.gz"]  # no temporaries


def test_geometry_tolerance():
    g = make_phantom().geometry
    shifted = Geometry(g.size, g.spacing, tuple(o + 1e-4 for o in g.origin), g.direction)
    assert g.differences(shifted) == []
    moved = Geometry(g.size, g.spacing, tuple(o + 0.5 for o in g.origin), g.direction)
    assert g.differences(moved)[0].startswith("origin")


def test_index_to_physical_matches_simpleitk():
    phantom = make_phantom()
    image = phantom.geometry.apply(sitk.GetImageFromArray(phantom.adc))
    point = (12.5, 40.0, 7.25)
    np.testing.assert_allclose(phantom.geometry.index_to_physical(np.array([point]))[0],
                               image.TransformContinuousIndexToPhysicalPoint(point), atol=1e-9)


def test_case_naming_and_shards(tmp_path):
    assert case_id_of("x/Zmap_MGHNICU_014-VISIT_01-ADC_smooth2mm_clipped10.mha") == "MGHNICU_014"
    assert case_id_of("scan.nii.gz") == "scan"
    assert pair_case("a/MGHNICU_7-VISIT_01-ADC_ss.nii.gz", "b.mha").output_stem == "MGHNICU_7-VISIT_01_lesion"
    cases = list(range(7))
    assert shard(cases, "1/3") + shard(cases, "2/3") + shard(cases, "3/3") == [0, 3, 6, 1, 4, 2, 5]
    with pytest.raises(ValueError):
        shard(cases, "4/3")
    with pytest.raises(InputError, match="unrecognised input layout"):
        find_cases(tmp_path)
