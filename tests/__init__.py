"""The test suite: real servers, a real kube-apiserver and a real node; helpers in ``support/``.  May import anything."""
