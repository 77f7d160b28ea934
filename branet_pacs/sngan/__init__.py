"""Class-conditional SNGAN for synthetic 128x128 ROIs: train, generate (PNG / synthetic DICOM SC), score (FID/KID).

Entry points: `trainer.train`, `generate.generate`, `metrics.score_folders`; the CLI is `branet sngan ...`
(`commands.register`).
"""
