import pytest

pytest.importorskip("sklearn", reason="the test scenes use scikit-learn's sample photos: pip install 'fer-faces[test]'")
