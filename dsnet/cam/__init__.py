"""The CAM service (``service``): maps, top-5 and faithfulness for the zoo's models; image operations
(``images``), pictures (``render``) and ground-truth localisation metrics (``localisation``)."""
