" Vim/Neovim syntax for incdsl network specs (.inc). Put this folder on 'runtimepath' (see README).
if exists("b:current_syntax")
  finish
endif

syn match   incdslComment   "#.*$" contains=@Spell
syn region  incdslTitle     start=+"+ end=+"+ oneline
syn keyword incdslHeader    network input classes budget defaults
syn keyword incdslKeyword   template aux branch after residual gate split shortcut sequential
syn keyword incdslKind      conv maxpool avgpool adaptive_avgpool global_avgpool lrn dropout linear flatten batchnorm layernorm layernorm2d channels_last channels_first layer_scale stochastic_depth relu relu6 silu sigmoid hardswish hardsigmoid gelu tanh leaky_relu identity shuffle softmax act inception
syn match   incdslName      "^\s*\zs[A-Za-z0-9_]\+\ze\s*:"
syn match   incdslTemplate  "\<template\s\+\zs[A-Za-z_][A-Za-z0-9_]*"
syn match   incdslOption    "\<[A-Za-z_][A-Za-z0-9_]*\ze="
syn match   incdslNumber    "\<\d\+\(\.\d*\)\=\([eE][+-]\=\d\+\)\=\>"
syn match   incdslSize      "\<\d\+\(x\d\+\)\+\(/\d\+\)\=\>"
syn match   incdslQuantity  "\<\d\+\(\.\d\+\)\=[KMGT]\>"
syn match   incdslRepeat    "\<\d\+x\ze\s\+[A-Za-z_]"

hi def link incdslComment   Comment
hi def link incdslTitle     String
hi def link incdslHeader    PreProc
hi def link incdslKeyword   Keyword
hi def link incdslKind      Type
hi def link incdslName      Identifier
hi def link incdslTemplate  Function
hi def link incdslOption    Special
hi def link incdslNumber    Number
hi def link incdslSize      Number
hi def link incdslQuantity  Number
hi def link incdslRepeat    Operator

let b:current_syntax = "incdsl"
