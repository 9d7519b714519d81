"""Every method's name, description, paper, cost and options with their defaults, known without
importing the methods (and so without torch): ``pyexplain methods`` and ``pyexplain --help`` read
this table. ``tests/test_method_catalog.py`` checks it against the registered functions, so a method
added or changed there fails the test until its entry here matches.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

#: A cost of a fixed number of passes ("1 forward + 1 backward", "2 forwards + 2 backwards", ...).
_FIXED_COST = re.compile(r"^\d+ forwards?( \+ \d+ (partial )?backwards?)+$")


@dataclass(frozen=True)
class MethodEntry:
    name: str
    iterative: bool
    description: str
    paper: str
    cost: str
    defaults: dict[str, Any] = field(default_factory=dict)
    #: The map's sign with the default options: "signed" or "nonnegative" (see registry.MapSign);
    #: ``sign_note`` says which option changes it, for the methods whose sign depends on one.
    sign: str = "signed"
    sign_note: str = ""

    @property
    def fixed_cost(self) -> bool:
        """A fixed-rule method whose cost is a fixed, small number of passes (no steps, samples or iterations)."""
        return not self.iterative and bool(_FIXED_COST.match(self.cost))


METHODS: dict[str, MethodEntry] = {entry.name: entry for entry in (
    MethodEntry(
        'blur_ig', iterative=True,
        description='integrated gradients along the path from a maximally blurred copy of the image to the image',
        paper='Xu, Venugopalan, Sundararajan: Attribution in Scale and Space (CVPR 2020)',
        cost='steps forwards + steps backwards',
        defaults={'max_sigma': 50.0, 'steps': 100, 'internal_batch_size': None},
    ),
    MethodEntry(
        'deconvnet', iterative=False,
        description='backward pass that rectifies the gradient instead of gating it',
        paper='Zeiler, Fergus: Visualizing and Understanding Convolutional Networks (ECCV 2014)',
        cost='1 forward + 1 backward',
        defaults={},
    ),
    MethodEntry(
        'deeplift', iterative=False,
        description='DeepLIFT rescale rule: differences from a reference (zero by default) propagated as multipliers',
        paper='Shrikumar, Greenside, Kundaje: Learning Important Features Through Propagating Activation Differences (ICML 2017)',
        cost='1 forward + 1 backward (+ 1 forward of a constant reference per model state and image shape, at batch 1)',
        defaults={'reference': 0.0, 'maxpool': 'rescale', 'eps': 1e-10},
    ),
    MethodEntry(
        'dmbp', iterative=True,
        description='learned masks on every activation split the logit into positive, negative and nuisance parts',
        paper='Ruiz, Agudo, Moreno-Noguer: Generating Attribution Maps with Disentangled Masked Backpropagation (ICCV 2021)',
        cost='iterations × (1 gated forward of 2 rows + 1 backward), plus 3 forwards and 1 backward',
        defaults={'iterations': 200, 'lr': 0.01, 'loss': 'all', 'linearize': False},
    ),
    MethodEntry(
        'extremal_perturbation', iterative=True,
        description='smooth masks of fixed areas that best preserve (or delete) the target score; one map per area',
        paper='Fong, Patrick, Vedaldi: Understanding Deep Networks via Extremal Perturbations and Smooth Masks (ICCV 2019)',
        cost='iterations forwards + iterations backwards per area (300 by default)',
        defaults={
            'areas': 0.1, 'iterations': 300, 'learning_rate': 0.05, 'step': 7, 'sigma': 21.0,
            'temperature': 20.0, 'blur_sigma': 20.0, 'area_weight': 30.0, 'area_weight_growth': 164.0,
            'variant': 'preserve', 'jitter': True,
        },
        sign='nonnegative',
    ),
    MethodEntry(
        'fullgrad', iterative=False,
        description='input-gradient plus upsampled bias-gradient maps of every conv/BN layer',
        paper='Srinivas, Fleuret: Full-Gradient Representation for Neural Network Visualization (NeurIPS 2019)',
        cost='1 forward + 1 backward',
        defaults={},
        sign='nonnegative',
    ),
    MethodEntry(
        'gradcam', iterative=False,
        description='gradient-weighted class activation map of a convolutional layer (last spatial layer by default)',
        paper='Selvaraju et al.: Grad-CAM (ICCV 2017)',
        cost='1 forward + 1 partial backward',
        defaults={'layer': None, 'interpolation': 'bilinear', 'reshape': 'auto'},
        sign='nonnegative',
    ),
    MethodEntry(
        'gradxinput', iterative=False,
        description='input gradient times input ∂F_t/∂x ⊙ x',
        paper='Shrikumar et al.: Not Just a Black Box (arXiv 2016)',
        cost='1 forward + 1 backward',
        defaults={},
    ),
    MethodEntry(
        'guided_backprop', iterative=False,
        description='gradient with negative gradients zeroed at every activation',
        paper='Springenberg et al.: Striving for Simplicity: The All Convolutional Net (ICLR-W 2015)',
        cost='1 forward + 1 backward',
        defaults={},
    ),
    MethodEntry(
        'guided_gradcam', iterative=False,
        description='Guided Backprop multiplied by the upsampled Grad-CAM map',
        paper='Selvaraju et al.: Grad-CAM (ICCV 2017)',
        cost='1 forward + 1 partial backward + 1 backward',
        defaults={'layer': None, 'interpolation': 'bilinear', 'reshape': 'auto'},
    ),
    MethodEntry(
        'integrated_gradients', iterative=False,
        description='path integral of gradients from a baseline (zero by default)',
        paper='Sundararajan, Taly, Yan: Axiomatic Attribution for Deep Networks (ICML 2017)',
        cost='steps forwards + steps backwards',
        defaults={'steps': 50, 'baseline': 0.0, 'internal_batch_size': 32},
    ),
    MethodEntry(
        'lpr', iterative=True,
        description="learned propagation rules: a per-image rule φ'(f)·tanh(W⊙(f−f_ref)) at every activation, optimized so that masking the map's positive/negative pixels moves the score most",
        paper='Yang, Qiu, Song, Tao, Wang: Learning Propagation Rules for Attribution Map Generation (ECCV 2020)',
        cost='1 reference forward + 1 forward + iterations × (second-order backward + forward/backward of 2 masked copies); with rules=FILE: 1 forward + 1 backward',
        defaults={
            'iterations': 50, 'lr': 0.007, 'gamma': 10.0, 'alpha': 0.75, 'beta': 0.25, 'lam': 0.1,
            'arch': 'position', 'variant': 'feature', 'reference': True, 'mask': 'sigmoid',
            'smooth_sigma': 4.0, 'normalize': 'symmetric', 'keep_activation_mask': True, 'pass_saturated': False,
            'head': False, 'init': 1.0, 'init_std': 0.0, 'seed': 0, 'patience': 0, 'tol': 0.0001, 'return_masks': False,
            'rules': None,
        },
    ),
    MethodEntry(
        'lrp_epsilon', iterative=False,
        description='layer-wise relevance propagation: ε-rule on conv/linear (BatchNorm folded), proportional residual sums',
        paper='Bach et al.: On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise Relevance Propagation (PLoS ONE 2015)',
        cost='1 forward + 1 backward',
        defaults={'epsilon': 1e-06, 'fold_batchnorm': True},
    ),
    MethodEntry(
        'meaningful_perturbation', iterative=True,
        description="learned smooth deletion mask: the smallest blurred region that removes the target's probability",
        paper='Fong, Vedaldi: Interpretable Explanations of Black Boxes by Meaningful Perturbation (ICCV 2017)',
        cost='iterations forwards + iterations backwards (300 by default)',
        defaults={
            'iterations': 300, 'learning_rate': 0.1, 'area_weight': 0.01, 'tv_weight': 0.2, 'tv_beta': 3.0,
            'mask_size': 28, 'blur_sigma': 10.0, 'probability': True,
        },
        sign='nonnegative',
    ),
    MethodEntry(
        'occlusion', iterative=True,
        description='score drop when a sliding patch (all channels) is replaced by a constant',
        paper='Zeiler, Fergus: Visualizing and Understanding Convolutional Networks (ECCV 2014)',
        cost='(⌈(H−window)/stride⌉+1)·(⌈(W−window)/stride⌉+1) + 1 forwards (170 at 224 px with the defaults)',
        defaults={'window': 32, 'stride': 16, 'fill': 0.0, 'internal_batch_size': None},
    ),
    MethodEntry(
        'rise', iterative=True,
        description="mean of random smooth masks weighted by the target's probability on the masked image",
        paper='Petsiuk, Das, Saenko: RISE: Randomized Input Sampling for Explanation of Black-box Models (BMVC 2018)',
        cost='masks forwards (1000 by default)',
        defaults={'masks': 1000, 'cells': 7, 'keep': 0.5, 'seed': 0, 'probability': True, 'internal_batch_size': None},
        sign='nonnegative',
        sign_note='signed with probability=False',
    ),
    MethodEntry(
        'saliency', iterative=False,
        description='absolute input gradient |∂F_t/∂x|',
        paper='Simonyan, Vedaldi, Zisserman: Deep Inside Convolutional Networks (ICLR-W 2014)',
        cost='1 forward + 1 backward',
        defaults={'absolute': True},
        sign='nonnegative',
        sign_note='signed with absolute=False',
    ),
    MethodEntry(
        'smoothgrad', iterative=False,
        description='gradient averaged over Gaussian-noised copies of the input',
        paper='Smilkov et al.: SmoothGrad: removing noise by adding noise (ICML-W 2017)',
        cost='samples forwards + samples backwards',
        defaults={'samples': 50, 'noise_level': 0.15, 'seed': 0, 'internal_batch_size': 32},
    ),
    MethodEntry(
        'smoothgrad_sq', iterative=False,
        description='squared gradient averaged over Gaussian-noised copies of the input',
        paper='Hooker et al.: A Benchmark for Interpretability Methods in Deep Neural Networks (NeurIPS 2019)',
        cost='samples forwards + samples backwards',
        defaults={'samples': 50, 'noise_level': 0.15, 'seed': 0, 'internal_batch_size': 32},
        sign='nonnegative',
    ),
)}
