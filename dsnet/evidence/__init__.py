"""The research command lines: training (``train``, ``seedstudy``), evaluation (``evaluate``,
``seedreport``, ``figure``, ``explain``), curves and statistics (``curves``, ``stats``)."""
