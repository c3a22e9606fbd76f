"""Contracts shared by every stage: configs, manifests, cameras, image IO, tracking, seeding, devices.

Nothing here imports a sibling stage (house style §8.1 rule 10).
"""
